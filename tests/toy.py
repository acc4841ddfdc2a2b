"""A pointwise toy SegModel for testing the shared inference and API paths:
every pixel's class scores depend only on that pixel, so any window / padding
layout must give the same scores inside the image."""
import torch
import torch.nn as nn

from vocabseg.protocol import Protocol
from vocabseg.model import SegModel


class PointwiseModel(SegModel):
    def __init__(self, dim: int = 8, protocol: Protocol | None = None):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 1)
        self.protocol = protocol or Protocol(short_side=48, max_side=200, mode="whole", size_divisibility=16)
        self.encoded = 0
        self.config = {"preset": "toy"}

    def encode_image(self, images):
        self.encoded += 1
        return nn.functional.normalize(self.proj(images), dim=1)

    def classify(self, features, text, vocab):
        from vocabseg.vocab import reduce_synonyms
        logits = torch.einsum("bdhw,sd->bshw", features, text.to(features))
        return reduce_synonyms(logits, vocab.synonym_index, len(vocab), dim=1)

    def finalize(self, scores, vocab):
        return (10 * scores).softmax(1)

    def text_tower(self):
        raise NotImplementedError


def fake_text(vocab, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Unit embeddings per synonym, a fixed function of the synonym string."""
    out = []
    for s in vocab.prompts:
        g = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(s)) + seed)
        out.append(nn.functional.normalize(torch.randn(dim, generator=g), dim=0))
    return torch.stack(out)
