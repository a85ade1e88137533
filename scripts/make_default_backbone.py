"""Re-make the packaged default HyperSL backbone: ``python scripts/make_default_backbone.py``.

Runs the study's own default pretraining (``ensure_default_backbone``: the ``cpu``
size, its recorded settings, one torch thread) into a fresh temporary cache and
copies the checkpoint and its cards into ``study/pretrain/packaged/``,
replacing what was there. Run it whenever the pretraining recipe changes
(``tests/test_pretrain.py`` fails until then); it takes a minute or two on one core.
"""

from __future__ import annotations

import shutil
import sys
import tempfile

from study.pretrain import PACKAGED, default_config, ensure_default_backbone


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hsistudy-default-backbone-") as tmp:
        # force=True: pretrain here even though a packaged copy exists (that copy is what is being re-made)
        path = ensure_default_backbone(cache_dir=tmp, config=default_config("cpu"), progress=True, force=True)
        for old in PACKAGED.glob("hypersl-*"):
            old.unlink()
        PACKAGED.mkdir(parents=True, exist_ok=True)
        for f in sorted(path.parent.glob(path.stem + ".*")):
            if f.suffix in (".pt", ".json", ".md"):
                shutil.copy2(f, PACKAGED / f.name)
                print(f"wrote {PACKAGED / f.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
