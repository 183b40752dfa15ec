"""The SentencePiece tokenizer with Gemma's ids and chat markers."""

from __future__ import annotations

from pathlib import Path

from showwork.errors import UsageError
from showwork.task.prompts import END_OF_TURN, START_OF_TURN

BOS_ID, EOS_ID, PAD_ID = 2, 1, 0


class Tokenizer:
    """SentencePiece with Gemma's ids and chat markers.

    A thin wrapper: tunix's samplers accept the underlying processor
    (`.sp`), our code uses the methods below.
    """

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.end_of_turn_id = self.sp.piece_to_id(END_OF_TURN)
        self.start_of_turn_id = self.sp.piece_to_id(START_OF_TURN)
        if (self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()) != (BOS_ID, EOS_ID, PAD_ID):
            raise UsageError(
                "tokenizer must use Gemma ids bos=2 eos=1 pad=0, got "
                f"bos={self.sp.bos_id()} eos={self.sp.eos_id()} pad={self.sp.pad_id()}"
            )

    @classmethod
    def from_file(cls, path: Path) -> "Tokenizer":
        if not path.exists():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        return cls(path.read_bytes())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [BOS_ID, *ids] if bos else ids

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def ids_starting_with(self, text: str) -> list[int]:
        """Ids of every piece that begins with `text` (e.g. `>`, `>.`, `>,`)."""
        if not hasattr(self, "_pieces"):
            self._pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        return [i for i, piece in enumerate(self._pieces) if piece.startswith(text)]
