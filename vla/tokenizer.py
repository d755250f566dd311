"""Tokenizers: a small byte-level BPE trained offline for the tiny model, or a pretrained
backbone's own tokenizer from a local directory. Either is saved into the checkpoint's
`tokenizer/` folder, so a checkpoint carries everything needed to turn text into ids.

Byte-level BPE rather than a word vocabulary: reasoning text holds pixel coordinates
("[61,40]") and new instructions may hold unseen words, and bytes never fall out of vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# Text the tiny tokenizer always learns from, whatever the dataset: the reasoning grammar and
# the numbers pixel coordinates use.
BASE_CORPUS = (
    "PLAN: pick up the red cube; place it in the bowl. SUBTASK: pick up the red cube. "
    "MOVE: move forward left down. MOVE: close gripper. MOVE: open gripper. MOVE: stop. "
    "GRIPPER: [61,40] [60,44]. OBJECTS: red cube [50,40,62,52]; bowl [80,70,110,95].",
    " ".join(str(number) for number in range(256)),
    "put the blue green yellow purple orange cube cylinder on in the plate bowl basket and then "
    "stack left right of backward up",
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` (+ BASE_CORPUS), ids < vocab_size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*BASE_CORPUS, *corpus], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved with `save_pretrained` (ours, or a pretrained backbone's), never downloaded."""
    path = Path(directory)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer.json / tokenizer_config.json (a tokenizer saved with save_pretrained)"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def encode_text(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, max_tokens) padded on the right, and the mask of real tokens (B, max_tokens).

    Every text starts with BOS; texts longer than `max_tokens` are cut (the caller chooses a
    `max_text_tokens` that fits its instructions).
    """
    encoded = tokenizer(
        [f"{tokenizer.bos_token}{text}" for text in texts],
        padding="max_length",
        truncation=True,
        max_length=max_tokens,
        add_special_tokens=False,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"].bool()


def encode_reasoning(
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str | None],
    max_tokens: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reasoning ids (B, R) ending with EOS, right-padded, and their mask (B, R).

    No BOS: reasoning continues the instruction's sequence. A None or empty text is an empty
    row (that sample acts without thinking); R is the longest row, at most `max_tokens`.
    """
    rows = []
    for text in texts:
        ids = [] if not text else tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(ids[: max_tokens - 1] + [tokenizer.eos_token_id] if text else [])
    width = max((len(row) for row in rows), default=0)
    padded = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, : len(row)] = True
    return padded.to(device), mask.to(device)


def decode_reasoning(
    tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor, mask: torch.Tensor
) -> list[str]:
    """Generated ids (B, R) -> one text per row (EOS and padding dropped)."""
    return [
        tokenizer.decode(row[keep].tolist(), skip_special_tokens=True).strip()
        for row, keep in zip(ids, mask, strict=True)
    ]
