"""``samadapt serve``: an interactive segmentation web app over the same Segmenter as ``samadapt segment``.

- :mod:`~samadapt.serve.app`: the FastAPI application (``create_app``) and ``run_server``.
- :mod:`~samadapt.serve.sessions`: one open volume per session (windowed slices, Segmenter, labels, undo).
- :mod:`~samadapt.serve.schemas`: the request bodies (pydantic, every field checked).
- :mod:`~samadapt.serve.data_folder`: the one folder the server may read volumes from.
- :mod:`~samadapt.serve.encoding`: slices as PNG, masks and label slices as run lengths.
- ``static/index.html``: the page (plain HTML and JavaScript, no build step).

FastAPI and uvicorn come with the ``serve`` extra (``pip install 'samadapt[serve]'``).
"""
