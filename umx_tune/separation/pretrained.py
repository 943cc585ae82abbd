"""Open-Unmix's pretrained separators (their weights are downloaded: OfflineError without internet)."""

from __future__ import annotations

import contextlib
import io
import urllib.error

import torch
from openunmix.model import Separator

from umx_tune.config import TARGETS
from umx_tune.errors import ConfigError, OfflineError, first_line

PRETRAINED = ("umxhq",)


def load_pretrained(name: str, target: str, device: torch.device) -> Separator:
    """Open-Unmix's pretrained separator (downloads its weights; OfflineError without internet)."""
    import openunmix

    if name not in PRETRAINED:
        raise ConfigError(f"pretrained={name!r} is not known; choose one of {', '.join(PRETRAINED)}")
    if target not in TARGETS:
        raise ConfigError(f"target={target!r} is not allowed; choose one of {', '.join(TARGETS)}")
    try:
        # torch.hub announces the download on stderr; the error below says all that matters
        with contextlib.redirect_stderr(io.StringIO()):
            separator = openunmix.umxhq(targets=[target], residual=True, niter=1, device=str(device))
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise OfflineError(
            f"cannot download the pretrained {name} weights ({first_line(err)}); "
            "this needs internet access (or the weights in torch's hub cache)"
        ) from None
    return separator.eval()
