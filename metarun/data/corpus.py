"""The one in-memory form of a labelled text collection."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from metarun.errors import UserError, brief


@dataclass
class DataConfig:
    """A data source: its `_target_` returns a `Corpus`."""

    _target_: str = MISSING


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    labels: list[str]
    domains: list[str] | None = None  # None when the source has no domain column
    source: str = "corpus"  # where it came from, for error messages

    def __post_init__(self) -> None:
        if not self.texts:
            raise UserError(f"The data source {self.source} holds no rows; give a file with labelled text.")
        if len(self.labels) != len(self.texts) or (self.domains is not None and len(self.domains) != len(self.texts)):
            raise ValueError("texts, labels and domains must have the same length")
        empty = [i for i, text in enumerate(self.texts) if not text or not text.strip()]
        if empty:
            raise UserError(
                f"{len(empty)} row(s) of {self.source} have empty text (rows {brief(empty)}); every row needs "
                "a non-empty text. Remove those rows or set data.drop_empty=true to skip them."
            )

    def __len__(self) -> int:
        return len(self.texts)

    def class_keys(self, by_domain: bool) -> list[str]:
        """Each row's class: its label, or `domain/label` when classes live inside domains."""
        if not by_domain:
            return list(self.labels)
        return [f"{domain}/{label}" for domain, label in zip(self.require_domains(), self.labels)]

    def require_domains(self) -> list[str]:
        if self.domains is None:
            raise UserError(
                f"task=domain_adapt needs a domain for every row, but {self.source} has no domain column. "
                "Name it with data.domain_column=<column>, or use task=fewshot_cls."
            )
        return self.domains
