"""`trainer.cli` under accelerate's FSDP2 path on the CPU, for tests (gloo; `torch.distributed.run` or
`accelerate launch`). Accelerate turns `ACCELERATE_USE_FSDP` into FSDP only on accelerators and falls back to
plain multi-CPU data parallelism; this shim re-applies its own FSDP state there, so `prepare` shards with
`fully_shard` and `save_state` / `get_state_dict` take their FSDP branches, as on GPUs. With
FSDP_CPU_RECORD=DIR set, writes per process DIR/fsdp-<rank>.json: the distributed type and which modules were
sharded."""
import json
import os
import sys

import accelerate.state as state
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__
_plugin: list = []


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None:
        _plugin[:] = [fsdp_plugin]
    if _plugin and self.distributed_type == DistributedType.MULTI_CPU:  # re-applied: state is re-read later
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = _plugin[0]


def _record(prepare):
    def wrapped(self, *args, **kwargs):
        out = prepare(self, *args, **kwargs)
        folder = os.environ.get("FSDP_CPU_RECORD")
        if folder:
            from torch.distributed.fsdp import FSDPModule

            model = out[0] if isinstance(out, (tuple, list)) else out
            sharded = [type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)]
            with open(os.path.join(folder, f"fsdp-{self.process_index}.json"), "w") as fh:
                json.dump({"distributed_type": str(self.distributed_type), "sharded": sorted(set(sharded)),
                           "count": len(sharded)}, fh)
        return out
    return wrapped


if __name__ == "__main__":
    from accelerate import Accelerator

    from trainer.cli import main

    state.AcceleratorState.__init__ = _fsdp_on_cpu
    Accelerator.prepare = _record(Accelerator.prepare)
    main(sys.argv[1:])
