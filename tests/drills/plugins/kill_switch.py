"""A client-side test filter for the failure drills (not part of the package): it SIGKILLs its own site process when
that site receives the ``train`` task of a given round, as a hospital's machine dying mid-round would."""

from __future__ import annotations

import os
import signal

from nvflare.apis.filter import Filter
from nvflare.app_common.app_constant import AppConstants


class KillSwitch(Filter):
    def __init__(self, site: str, round: int):
        super().__init__()
        self.site = site
        self.round = round

    def process(self, shareable, fl_ctx):
        r = shareable.get_header(AppConstants.CURRENT_ROUND)
        if fl_ctx.get_identity_name() == self.site and r == self.round:
            os.kill(os.getpid(), signal.SIGKILL)
        return shareable
