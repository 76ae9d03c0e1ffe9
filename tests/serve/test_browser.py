"""The page in a real browser: Debian's headless Chromium driven by Playwright against a live server.

Skips only where no Chromium is installed (``.ci/run`` installs Debian's ``chromium``); Playwright never
downloads a browser of its own here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

from samadapt.io.volume import read_volume
from samadapt.serve.app import create_app
from samadapt.serve.background import BackgroundServer
from samadapt.serve.sessions import ServeSettings

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLOURED = """() => { const c = document.getElementById('view');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 1]) > 40) n++; return n; }"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_draw_a_box_see_the_mask_assign_it_and_download_the_nifti(tiny, data_dir, volume_name, tmp_path):
    truth = np.load(data_dir / "ct" / "liver_mask.npy")
    app = create_app(tiny, ServeSettings(data_dir=data_dir))
    with BackgroundServer(app) as url, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            accept_downloads=True, viewport={"width": 1100, "height": 800})
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            expect(page.locator("#volume-select")).to_have_value(volume_name)
            expect(page.locator("#download-link")).to_be_hidden()  # nothing to download before a volume is open
            page.click("#open-btn")
            expect(page.locator("#view")).to_have_attribute("data-loaded", "1")
            expect(page.locator("#download-link")).to_be_visible()
            k = int(page.get_attribute("#view", "data-slice"))
            assert k == 8 and page.evaluate(COLOURED) == 0  # middle slice, nothing drawn yet

            # the readout under the mouse: the raw HU value and the patient position (mm) of that voxel
            volume = read_volume(data_dir / volume_name)
            frame = page.locator("#view").bounding_box()
            col, row = 20, 30
            page.mouse.move(frame["x"] + (col + 0.5) * frame["width"] / truth.shape[2],
                            frame["y"] + (row + 0.5) * frame["height"] / truth.shape[1])
            readout = page.locator("#readout")
            expect(readout).to_contain_text(" HU at x ")
            assert readout.get_attribute("data-value") == str(int(volume.array[k, row, col]))  # identity direction
            page.mouse.move(frame["x"] - 5, frame["y"] - 5)
            expect(readout).to_have_text("")

            rows, cols = np.nonzero(truth[k])
            frame = page.locator("#view").bounding_box()
            sx, sy = frame["width"] / truth.shape[2], frame["height"] / truth.shape[1]
            page.mouse.move(frame["x"] + (cols.min() + 0.5) * sx, frame["y"] + (rows.min() + 0.5) * sy)
            page.mouse.down()
            page.mouse.move(frame["x"] + (cols.max() + 0.5) * sx, frame["y"] + (rows.max() + 0.5) * sy, steps=5)
            page.mouse.up()
            info = page.locator("#mask-info")
            expect(info).not_to_have_attribute("data-area", "-1")
            area = int(info.get_attribute("data-area"))
            assert area > 0 and page.evaluate(COLOURED) > 0  # the mask is drawn over the slice

            page.fill("#new-class", "liver")
            page.click("#add-class-btn")
            page.click("#assign-btn")
            expect(page.locator("#status")).to_contain_text("assigned to liver")
            with page.expect_download() as download:
                page.click("#download-link")
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            assert errors == []
        finally:
            context.close()
    labels = read_volume(saved)
    assert saved.name == "phantom_007_labels.nii.gz"
    assert labels.geometry == read_volume(data_dir / volume_name).geometry
    assert int((labels.array == 1).sum()) == area and set(np.nonzero(labels.array)[0]) == {k}
    liver_hit = (labels.array[k] == 1) & truth[k]
    assert liver_hit.sum() > 0.5 * area  # the mask is mostly liver: it came from the box drawn around it
