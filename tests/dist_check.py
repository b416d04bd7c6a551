"""Run under `torch.distributed.run --nproc_per_node N` (or plain python for N = 1): every loss on one global
batch split over the processes, plainly and through GradCache; writes each loss and the encoder's gradients
for comparison with a one-process run."""
import gc
import sys

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from trainer.data import Batch
from trainer.losses import gather, info_nce

out = sys.argv[1]
acc = Accelerator(cpu=True)
world, rank = acc.num_processes, acc.process_index


class TinyTokenizer:
    """Token ids are the text's integers; the calls the trainer makes of a Hugging Face tokenizer."""

    padding_side = "right"

    def __call__(self, texts, padding=False, truncation=True, max_length=16, return_tensors=None):
        ids = [[int(t) for t in x.split()][:max_length] for x in texts]
        return self.pad({"input_ids": ids}) if padding else {"input_ids": ids}

    def pad(self, batch, return_tensors="pt"):
        ids = batch["input_ids"]
        width = max(len(i) for i in ids)
        return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


class Tiny(torch.nn.Module):
    """A bag-of-token-ids encoder with the trainer model's interface (tokenizer + forward)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.proj = torch.nn.Linear(16, 8)
        self.tokenizer = TinyTokenizer()

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask[..., None]
        return F.normalize(self.proj(h.sum(1) / attention_mask.sum(1, keepdim=True)), dim=-1)


class Cfg:  # the fields of TrainConfig that the steps read
    class model:
        padding_free = True  # the default path: length-grouped chunks, order restored

    class data:
        query_max_length = doc_max_length = 16
    tau, cosent_scale, query_negatives, grad_cache_chunk = 0.05, 20.0, True, 3


g = torch.Generator().manual_seed(0)
texts = [" ".join(str(int(x)) for x in torch.randint(1, 50, (int(torch.randint(2, 7, (1,), generator=g)),),
                                                     generator=g)) for _ in range(64)]
global_b, k = 8, 2
part = global_b // world
sl = slice(rank * part, (rank + 1) * part)
batches = {
    "retrieval": Batch("retrieval", "d", texts[:8][sl], texts[8:16][sl],
                       [texts[16 + 2 * i: 18 + 2 * i] for i in range(8)][sl]),
    "pair": Batch("pair", "d", texts[32:40][sl], texts[40:48][sl], scores=[0.0, 1, 2, 3, 4, 5, 2, 1][sl]),
    "classification": Batch("classification", "d", texts[48:56][sl], texts[56:64][sl],
                            [[texts[i], texts[i + 1]] for i in range(0, 16, 2)][sl],
                            labels=[0, 1, 0, 2, 1, 2, 0, 1][sl],
                            negative_labels=[[1, 2], [0, 2], [1, 2], [0, 1], [0, 2], [0, 1], [1, 2], [0, 2]][sl]),
}
results = {"world": world}
from trainer.step_loss import batch_loss, grad_cache_step  # noqa: E402

for kind, batch in batches.items():
    for cached in (False, True):
        torch.manual_seed(0)
        model = acc.prepare(Tiny())
        plain = acc.unwrap_model(model)

        class Fwd:  # forward through the DDP wrapper, tokenise with the plain module (as the trainer does)
            tokenizer, device = plain.tokenizer, torch.device("cpu")

            def __call__(self, **kw):
                return model(**kw)

        if cached:
            loss, *_ = grad_cache_step(Fwd(), batch, Cfg, acc.backward, lambda: acc.no_sync(model))
        else:
            loss, *_ = batch_loss(Fwd(), batch, Cfg)
            acc.backward(loss)
        name = f"{kind}{'/gradcache' if cached else ''}"
        results[name] = {"loss": acc.gather(loss.detach().reshape(1)).mean(),
                         "grad": torch.cat([p.grad.flatten() for p in plain.parameters()])}
        acc.wait_for_everyone()

# the gathered documents of InfoNCE: the same rows in the same order as one process sees them
torch.manual_seed(0)
x_q, x_p, x_n = torch.randn(global_b, 16), torch.randn(global_b, 16), torch.randn(global_b, k, 16)
lin = acc.prepare(torch.nn.Linear(16, 8))
q, p, n = (F.normalize(lin(x[sl]), dim=-1) for x in (x_q, x_p, x_n))
info_nce(q, p, n, tau=0.05)
results["docs"] = torch.cat([gather(p)[0], gather(n.reshape(-1, 8))[0]]).detach()
if acc.is_main_process:
    torch.save(results, out)
acc.wait_for_everyone()
# The DDP wrappers hold the gloo process group: as module globals they would outlive it and be destroyed during
# interpreter finalization, where gloo's threads can abort the process ("terminate called without an active
# exception", SIGABRT, seen once in CI). Release them while the interpreter is whole, then tear the group down.
del model, plain, lin, Fwd
acc.free_memory()
gc.collect()
acc.end_training()
