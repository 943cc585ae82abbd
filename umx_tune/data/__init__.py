"""Datasets in the MUSDB18 layout: the synthetic default (synth/), musdb folders, the WAV reader.

The names below describe that layout; this module imports nothing heavy, so anything may use them.
"""

from __future__ import annotations

from umx_tune.config import TARGETS

# A track's files, `<stem>.wav`: the mixture and the four sources (config.TARGETS).
STEMS = ("mixture", *TARGETS)
# Stream order inside a MUSDB18 `.stem.mp4` file (musdb's setup `stem_ids`).
STEM_ORDER = ("mixture", "drums", "bass", "other", "vocals")
# The musdb setup file in a dataset's root that names the validation tracks (the synthetic one has it).
SETUP_FILE = "setup.yaml"
