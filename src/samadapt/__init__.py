"""samadapt: adapt Segment Anything (SAM) to medical image segmentation.

Three methods on one pipeline (prepare -> embed -> train/adapt -> eval -> segment/serve):
multi-prompt fine-tuning, PHPG + CBDP, and ProMISe. See README.md and docs/.
"""

__version__ = "0.1.0"
