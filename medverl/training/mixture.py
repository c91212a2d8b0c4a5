"""A weighted mixture of data sources as one verl dataset, for verl's SFT trainer (CPT, SFT) and ``main_ppo`` (GRPO).

verl concatenates ``data.train_files``; this class mixes them with ratios instead. It wraps the dataset class the
recipe would otherwise use, one instance per source (their tokenization as it is), and maps each position of an
epoch to ``(source, row)`` through a shuffled index (:mod:`medverl.training.mixing`), so verl's own samplers keep the
proportions::

    data.custom_cls.path=pkg://medverl.training.mixture data.custom_cls.name=MixtureDataset
    +data.mixture.dataset.path=pkg://medverl.training.cpt_dataset +data.mixture.dataset.name=CPTDataset
    "+data.mixture.sources=[{name:general,files:[g.parquet],weight:0.3},{name:medical,files:[m.parquet],weight:0.7}]"
    data.train_files=[g.parquet,m.parquet]

Keys under ``data.mixture``: ``dataset.{path,name}`` (the wrapped class; default verl's RLHFDataset when verl calls
with ``data_files=``, its MultiTurnSFTDataset with ``parquet_files=``), ``sources`` (``name``, ``files``,
``weight``: missing = by size), ``strategy`` (proportions, temperature), ``temperature``, ``samples`` or ``until``
(first, last), ``seed`` (default 0), ``draws`` (a directory: each process appends the sources it drew there).
verl calls the class for ``data.val_files`` too: files that are not the mixture's sources give the plain wrapped
dataset. verl's ``max_samples`` (``data.train_max_samples``) caps the epoch.
"""

from __future__ import annotations

import logging
import os

from omegaconf import OmegaConf
from torch.utils.data import Dataset

from medverl.training.mixing import DrawLog, build_index, check_weight, plan, unpack

logger = logging.getLogger(__name__)

# the dataset verl itself builds for each keyword its trainers call a custom class with
DEFAULT_DATASETS = {
    "data_files": ("pkg://verl.utils.dataset.rl_dataset", "RLHFDataset"),
    "parquet_files": ("pkg://verl.utils.dataset.multiturn_sft_dataset", "MultiTurnSFTDataset"),
}


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _files(files) -> list[str]:
    files = _plain(files)
    return [str(f) for f in ([files] if isinstance(files, str | os.PathLike) else files)]


def _same(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


class MixtureDataset(Dataset):
    """verl dataset over a weighted mixture (keys: the module's doc); ``len`` is the epoch's samples.

    Constructed with the files of every source, it mixes them; with other files (``data.val_files``) it returns
    the wrapped class's plain dataset over them instead.
    """

    def __new__(cls, parquet_files=None, tokenizer=None, config=None, processor=None, max_samples: int = -1,
                data_files=None):
        keyword, files = ("data_files", data_files) if data_files is not None else ("parquet_files", parquet_files)
        mixture = _plain((config or {}).get("mixture")) or {}
        sources = mixture.get("sources") or []
        mixed = {_same(f) for source in sources for f in _files(source.get("files") or [])}
        given = {_same(f) for f in _files(files)}
        if given == mixed and mixed:
            return super().__new__(cls)
        level = logging.WARNING if given & mixed else logging.INFO
        logger.log(level, "data.mixture: %d file(s) that are not the mixture's sources: the plain dataset over them",
                   len(given))
        return _inner_class(mixture, keyword)(**{keyword: _files(files)}, tokenizer=tokenizer, config=config,
                                              processor=processor, max_samples=max_samples)

    def __init__(self, parquet_files=None, tokenizer=None, config=None, processor=None, max_samples: int = -1,
                 data_files=None):
        keyword = "data_files" if data_files is not None else "parquet_files"
        mixture = _plain(config.get("mixture"))
        sources = mixture["sources"]
        inner = _inner_class(mixture, keyword)
        self.names = tuple(str(source["name"]) for source in sources)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"data.mixture.sources: names must be distinct, got {list(self.names)}")
        weights = []
        for name, source in zip(self.names, sources, strict=True):
            try:
                weights.append(None if source.get("weight") is None else check_weight(source["weight"]))
            except ValueError as exc:
                raise ValueError(f"data.mixture source {name}: {exc}") from None
        self.datasets = [inner(**{keyword: _files(source["files"])}, tokenizer=tokenizer, config=config,
                               processor=processor, max_samples=-1) for source in sources]
        try:
            self.plan = plan(self.names, [len(d) for d in self.datasets], weights,
                             strategy=mixture.get("strategy") or "proportions",
                             temperature=mixture.get("temperature"), samples=mixture.get("samples"),
                             until=mixture.get("until"), max_samples=max_samples or -1)
        except ValueError as exc:
            raise ValueError(f"data.mixture: {exc}") from None
        self.index = build_index(self.plan.rows, self.plan.samples, int(mixture.get("seed") or 0))
        self.draws = None
        if mixture.get("draws"):
            batch = config.get("gen_batch_size") or config.get("train_batch_size") or 1
            self.draws = DrawLog(mixture["draws"], self.names, int(batch) // int(os.environ.get("WORLD_SIZE", "1")))
        logger.info("data.mixture: %d samples per epoch\n%s", len(self.index), self.plan.table())

    def __len__(self) -> int:
        return len(self.index)

    # verl's agent loop reads a prompt's images and videos through the dataset class (given the data config), never
    # through an instance: the wrapped class does it
    @classmethod
    async def process_multi_modal_info(cls, messages: list[dict], image_patch_size, config):
        inner = _inner_class(_plain(config.get("mixture")) or {}, "data_files")
        if hasattr(inner, "process_multi_modal_info"):
            return await inner.process_multi_modal_info(messages, image_patch_size=image_patch_size, config=config)
        images, videos = await inner.process_vision_info(messages, image_patch_size=image_patch_size, config=config)
        return images, videos, None

    @classmethod
    async def process_vision_info(cls, messages: list[dict], image_patch_size, config):
        inner = _inner_class(_plain(config.get("mixture")) or {}, "data_files")
        return await inner.process_vision_info(messages, image_patch_size=image_patch_size, config=config)

    def __getitem__(self, position: int):
        source, row = unpack(self.index[position])
        if self.draws is not None:
            self.draws.record(source, int(position))
        return self.datasets[source][row]


def _inner_class(mixture: dict, keyword: str) -> type:
    """The class each source is read with: ``data.mixture.dataset``, or verl's own for `keyword`."""
    from verl.utils.import_utils import load_extern_object

    dataset = mixture.get("dataset") or {}
    path, name = (dataset.get("path"), dataset.get("name")) if dataset.get("path") else DEFAULT_DATASETS[keyword]
    if name == MixtureDataset.__name__:
        raise ValueError("data.mixture.dataset names the mixture itself: name the class each source is read with")
    return load_extern_object(path, name)

