"""The shipped launch configs parse with accelerate's own loader (tested on paper: no GPU cluster here), and the
report's training config loads with the per-GPU batch the multi-node configs assume."""
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from trainer.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
LAUNCH = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "qzhou-7b.yaml")


@pytest.mark.parametrize("path", LAUNCH, ids=[p.stem for p in LAUNCH])
def test_accelerate_config_parses(path):
    cfg = load_config_from_file(str(path))
    assert cfg.mixed_precision == "bf16" and not cfg.use_cpu
    assert cfg.num_processes % cfg.num_machines == 0  # the same GPUs on every node
    if "multinode" in path.stem:
        assert cfg.num_machines > 1 and cfg.rdzv_backend == "c10d" and cfg.main_process_port
        if cfg.distributed_type.value == "DEEPSPEED":
            assert cfg.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
            assert cfg.deepspeed_config["zero_stage"] == 3


def test_report_config_global_batch():
    cfg = load_config(CONFIGS / "qzhou-7b.yaml")
    assert cfg.data.batch_size * 8 == 256 and cfg.data.negatives == 4  # the 8 GPUs of the single-node configs
    assert cfg.data.pair_batch_size * 8 == 768 and cfg.data.eta == 0.72
    assert [s.lr for s in cfg.stages] == [3e-5, 2e-5] and cfg.mixed_precision == "bf16" and cfg.tau == 0.02
