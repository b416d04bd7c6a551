"""Run under `torchrun --nproc_per_node N` (or plain python for N = 1): InfoNCE on one global
batch split over the processes; writes the gathered documents, the loss and the gradients for comparison."""
import sys

import torch
from accelerate import Accelerator

from trainer.losses import info_nce

out = sys.argv[1]
acc = Accelerator(cpu=True)
torch.manual_seed(0)
encoder = torch.nn.Linear(16, 8)
global_b, k = 8, 2
x_q, x_p, x_n = torch.randn(global_b, 16), torch.randn(global_b, 16), torch.randn(global_b, k, 16)
model = acc.prepare(encoder)
part = global_b // acc.num_processes
sl = slice(acc.process_index * part, (acc.process_index + 1) * part)
norm = torch.nn.functional.normalize
q, p, n = norm(model(x_q[sl]), dim=-1), norm(model(x_p[sl]), dim=-1), norm(model(x_n[sl]), dim=-1)
loss = info_nce(q, p, n, tau=0.05)
acc.backward(loss)
from trainer.losses import gather  # noqa: E402

docs = torch.cat([gather(p)[0], gather(n.reshape(-1, 8))[0]])
losses = acc.gather(loss.detach().reshape(1))
if acc.is_main_process:
    unwrapped = acc.unwrap_model(model)
    torch.save({"world": acc.num_processes, "loss": losses.mean(), "grad_w": unwrapped.weight.grad, "grad_b": unwrapped.bias.grad,
                "docs": docs.detach()}, out)
acc.wait_for_everyone()
acc.end_training()  # tears the process group down before the interpreter exits
