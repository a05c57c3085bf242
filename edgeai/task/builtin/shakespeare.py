"""``shakespeare``: next-character prediction, the FedAvg paper's second benchmark.

McMahan et al. (2017) give every speaking role of Shakespeare's plays its own client: a
naturally non-IID federation, as LEAF does too. We ship "tiny Shakespeare" (1.1 M
characters, `edgeai/data/builtin/tinyshakespeare.ATTRIBUTION.md`); a line ``NAME:`` after a
blank line starts a speech, which gives 309 roles, 99 of them with at least 2,000
characters. The text carries no play boundaries, so a name that speaks in two plays
(GLOUCESTER) is one role.

A sample is a window of 80 characters (ids, int64) and its target is the next character.
The validation set is a held-out set of roles: every ``holdout_every``-th role in the
ranking by size, so held-out roles span big and small speakers and never train.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import Dataset

from edgeai.errors import ConfigError
from edgeai.task.base import Task
from edgeai.task.registry import register

WINDOW = 80
TEXT_PATH = Path(__file__).resolve().parents[2] / "data" / "builtin" / "tinyshakespeare.txt.gz"
# Speaker lines: "First Citizen:", "KING RICHARD II:", "Senators, &C:".
_SPEAKER = re.compile(r"[A-Za-z][A-Za-z' .,&-]*:")


def parse_roles(text: str) -> dict[str, str]:
    """Each role's speeches, joined by newlines, in order of first appearance.

    A speech starts at a line ``NAME:`` that follows a blank line (or opens the text) and
    runs to the next such line; the blank lines around it are dropped.
    """
    speeches: dict[str, list[str]] = {}
    current: list[str] | None = None
    lines: list[str] = []
    previous_blank = True
    for line in text.split("\n"):
        if previous_blank and _SPEAKER.fullmatch(line):
            if current is not None:
                current.append("\n".join(lines).strip("\n"))
            current = speeches.setdefault(line[:-1], [])
            lines = []
        elif current is not None:
            lines.append(line)
        previous_blank = line.strip() == ""
    if current is not None:
        current.append("\n".join(lines).strip("\n"))
    return {name: "\n".join(s for s in parts if s) for name, parts in speeches.items()}


@dataclass(frozen=True)
class Corpus:
    """The roles as character ids: role ``r`` is ``codes[offsets[r]:offsets[r + 1]]``.

    Roles are ranked by characters spoken (most first, ties by name).
    """

    vocab: tuple[str, ...]
    names: tuple[str, ...]
    codes: NDArray[np.uint8]
    offsets: NDArray[np.int64]

    def role_length(self, rank: int) -> int:
        """Characters spoken by the role of this rank."""
        return int(self.offsets[rank + 1] - self.offsets[rank])

    def window_starts(self, rank: int, stride: int) -> NDArray[np.int64]:
        """Where the windows of one role start: each window and its target stay inside it."""
        return np.arange(self.offsets[rank], self.offsets[rank + 1] - WINDOW, stride)


def build_corpus(text: str) -> Corpus:
    """Parse ``text`` into roles and encode them with the vocabulary of ``text``."""
    roles = parse_roles(text)
    if not roles:
        raise ConfigError("no speaking roles found: expected lines 'NAME:' after blank lines")
    vocab = tuple(sorted(set(text)))
    if len(vocab) > 255:
        raise ConfigError(f"{len(vocab)} distinct characters; at most 255 fit the encoding")
    ids = {ch: i for i, ch in enumerate(vocab)}
    table = np.zeros(max(map(ord, vocab)) + 1, dtype=np.uint8)
    for ch, i in ids.items():
        table[ord(ch)] = i
    names = tuple(sorted(roles, key=lambda n: (-len(roles[n]), n)))
    joined = "".join(roles[n] for n in names)
    codes = table[np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)]
    offsets = np.concatenate([[0], np.cumsum([len(roles[n]) for n in names])]).astype(np.int64)
    return Corpus(vocab=vocab, names=names, codes=codes, offsets=offsets)


@cache
def shipped_corpus() -> Corpus:
    """The shipped tiny Shakespeare, parsed once per process."""
    with gzip.open(TEXT_PATH, "rt", encoding="utf-8", newline="") as fh:
        return build_corpus(fh.read())


class CharWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(ids int64 (80,), next id int64 ())`` for each window start."""

    def __init__(self, codes: NDArray[np.uint8], starts: NDArray[np.int64]) -> None:
        self.codes = codes
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[index])
        window = self.codes[start : start + WINDOW + 1].astype(np.int64)
        return torch.from_numpy(window[:WINDOW]), torch.tensor(window[WINDOW])

    def arrays(self, indices: NDArray[np.int64] | None = None) -> tuple[torch.Tensor, ...]:
        """All (or the chosen) samples at once: ids (N, 80) int64 and targets (N,) int64."""
        starts = self.starts if indices is None else self.starts[indices]
        grid = starts[:, None] + np.arange(WINDOW + 1)[None, :]
        both = torch.from_numpy(self.codes[grid].astype(np.int64))
        return both[:, :WINDOW].contiguous(), both[:, WINDOW].contiguous()


class CharLSTM(nn.Module):
    """The FedAvg paper's model: 8-dim embedding, 2-layer LSTM, a linear read-out.

    Takes ids int64 (N, 80) and returns next-character logits (N, vocab) from the last
    step. ``dp_lstm`` builds Opacus's ``DPLSTM``, whose parameter names and shapes equal
    ``nn.LSTM``'s, so weights trained either way load into the other.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden: int,
        embed_dim: int = 8,
        layers: int = 2,
        *,
        dp_lstm: bool = False,
    ) -> None:
        super().__init__()
        self.layers = layers
        self.embed = nn.Embedding(vocab_size, embed_dim)
        if dp_lstm:
            from opacus.layers import DPLSTM  # noqa: PLC0415 (opacus is slow to import)

            self.lstm: nn.Module = DPLSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
            # Nested, DPLSTM's state_dict holds each weight twice (nn.LSTM's name and its
            # own) in another order: keep nn.LSTM's keys and order, so weights travel as
            # the same arrays with or without DP, and accept them back.
            # torch leaves both hook registrations unannotated.
            self.register_state_dict_post_hook(_lstm_keys_only)  # type: ignore[no-untyped-call]
            self.register_load_state_dict_pre_hook(_dplstm_aliases)  # type: ignore[no-untyped-call]
        else:
            self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of the character that follows each window."""
        out, _ = self.lstm(self.embed(ids))
        logits: torch.Tensor = self.head(out[:, -1, :])
        return logits


_LSTM_ORDER = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _lstm_keys_only(
    module: nn.Module, state: dict[str, torch.Tensor], prefix: str, metadata: object
) -> None:
    """Drop DPLSTM's own keys and put the rest in ``nn.LSTM``'s order, in place."""
    del metadata
    layers = module.layers if isinstance(module, CharLSTM) else 0
    keys = [k for k in state if k.startswith(prefix)]
    ours = {k: state.pop(k) for k in keys}
    lstm = [f"{prefix}lstm.{kind}_l{layer}" for layer in range(layers) for kind in _LSTM_ORDER]
    emitted = False
    for key in keys:
        if not key.startswith(prefix + "lstm."):
            state[key] = ours[key]
        elif not emitted:
            state.update((name, ours[name]) for name in lstm)
            emitted = True


def _dplstm_aliases(
    module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *args: object
) -> None:
    """Give each ``lstm.weight_ih_l0`` its DPLSTM twin ``lstm.l0.ih.weight``."""
    del module, args
    for key in list(state):
        match = re.fullmatch(re.escape(prefix) + r"lstm\.(weight|bias)_(ih|hh)_l(\d+)", key)
        if match:
            kind, gate, layer = match.groups()
            state.setdefault(f"{prefix}lstm.l{layer}.{gate}.{kind}", state[key])


def _at_least(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"option {name} = {value!r}; use an integer >= {low}")
    return value


class ShakespeareTask(Task):
    """Next-character prediction on tiny Shakespeare, one client per speaking role.

    Options (``[task.options]``)
    ----------------------------
    hidden
        LSTM units per layer: 256 is the paper's model; 128 trains ~3x faster on a CPU.
    stride
        Characters between consecutive training windows of a role (1: every position, as
        the paper; 8 keeps an eighth of the windows, for quick runs).
    holdout_every
        Every n-th role of the ranking by size is held out for validation.
    val_windows
        Validation windows, evenly spaced over the held-out roles (0: all of them).
    dp_lstm
        Build Opacus's DPLSTM (per-sample gradients for DP-SGD) instead of ``nn.LSTM``.
    """

    name: ClassVar[str] = "shakespeare"
    version: ClassVar[str] = "1"

    def __init__(
        self,
        *,
        hidden: int = 256,
        stride: int = 1,
        holdout_every: int = 10,
        val_windows: int = 10_000,
        dp_lstm: bool = False,
    ) -> None:
        self.hidden = _at_least("hidden", hidden, 1)
        self.stride = _at_least("stride", stride, 1)
        self.holdout_every = _at_least("holdout_every", holdout_every, 2)
        self.val_windows = _at_least("val_windows", val_windows, 0)
        if not isinstance(dp_lstm, bool):
            raise ConfigError(f"option dp_lstm = {dp_lstm!r}; use true or false")
        self.dp_lstm = dp_lstm
        self._datasets: tuple[CharWindows, CharWindows] | None = None
        self._role_ranges: list[range] = []

    @property
    def corpus(self) -> Corpus:
        """The parsed, encoded text."""
        return shipped_corpus()

    def held_out(self, rank: int) -> bool:
        """Whether the role of this rank (by size) is a validation role."""
        return rank % self.holdout_every == self.holdout_every // 2

    def training_roles(self) -> list[int]:
        """Ranks of the roles that train (all but the held-out ones)."""
        return [r for r in range(len(self.corpus.names)) if not self.held_out(r)]

    def build_model(self) -> nn.Module:
        """A fresh :class:`CharLSTM` (``nn.LSTM``, or DPLSTM with ``dp_lstm``)."""
        return CharLSTM(len(self.corpus.vocab), self.hidden, dp_lstm=self.dp_lstm)

    def datasets(self) -> tuple[CharWindows, CharWindows]:
        """Windows of the training roles; windows of the held-out roles."""
        if self._datasets is None:
            corpus = self.corpus
            train_parts: list[NDArray[np.int64]] = []
            self._role_ranges = []
            begin = 0
            for rank in self.training_roles():
                starts = corpus.window_starts(rank, self.stride)
                train_parts.append(starts)
                self._role_ranges.append(range(begin, begin + len(starts)))
                begin += len(starts)
            val = np.concatenate(
                [corpus.window_starts(r, 1) for r in range(len(corpus.names)) if self.held_out(r)]
            )
            if 0 < self.val_windows < len(val):
                val = val[np.linspace(0, len(val) - 1, self.val_windows).astype(np.int64)]
            self._datasets = (
                CharWindows(corpus.codes, np.concatenate(train_parts)),
                CharWindows(corpus.codes, val),
            )
        return self._datasets

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the next character."""
        return F.cross_entropy(output, target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``accuracy``: the share of windows whose next character is the top logit."""
        return {"accuracy": float((output.argmax(dim=1) == target).float().mean())}

    def example_input(self) -> torch.Tensor:
        """Four validation windows, ids int64 (4, 80)."""
        ids, _ = self.datasets()[1].arrays(np.arange(4))
        return ids

    def partition(self, num_clients: int, seed: int) -> list[list[int]]:
        """One client per role: the ``num_clients`` training roles with the most windows.

        Which roles is fixed (the biggest, ties by name); ``seed`` shuffles which client
        gets which role.
        """
        self.datasets()
        ranked = sorted((r for r in self._role_ranges if len(r) > 0), key=lambda r: -len(r))
        if not 1 <= num_clients <= len(ranked):
            raise ConfigError(
                f"{num_clients} clients but {len(ranked)} training roles "
                f"with at least {WINDOW + 1} characters; use at most {len(ranked)} clients"
            )
        order = np.random.default_rng(seed).permutation(num_clients)
        return [list(ranked[i]) for i in order]

    def onnx_metadata(self) -> Mapping[str, str]:
        """``edgeai.vocab``: the symbols in id order, as a JSON list."""
        return {"edgeai.vocab": json.dumps(list(self.corpus.vocab))}


register("shakespeare", ShakespeareTask)
