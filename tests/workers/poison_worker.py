"""`rowembed worker`, with a fault injected into the model runtime: while the file
named by ROWEMBED_TEST_POISON_FLAG exists, any call that includes a text
containing POISON raises, as a real model can on some inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rowembed.cli import main
from rowembed.workers.runtime import encoder as encoder_module

FLAG = Path(os.environ["ROWEMBED_TEST_POISON_FLAG"])
_real_forward = encoder_module.Encoder.encode_tokenized


def _forward(
    self: encoder_module.Encoder, tokenized: encoder_module.Tokenized, clock: Any = None
) -> encoder_module.Encoded:
    if FLAG.exists() and any("POISON" in t for t in tokenized.texts):
        raise RuntimeError("injected fault: the model cannot embed this text")
    return _real_forward(self, tokenized, clock)


encoder_module.Encoder.encode_tokenized = _forward  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main())
