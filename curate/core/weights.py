"""Names of the pretrained weights curate uses unless told otherwise (one place for each).

Standard library only: the command line reads these for its ``--help`` defaults.
"""

from __future__ import annotations

#: open_clip image/text model of the ``clip`` dedup tier, the audit's ``--features clip`` and
#: the CLIP score of text alignment.
CLIP_MODEL = "ViT-B-32"
#: its pretrained tag (LAION-2B); a local checkpoint path may be given instead.
CLIP_PRETRAINED = "laion2b_s34b_b79k"
