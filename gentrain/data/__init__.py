"""Datasets: ``hydra.utils.instantiate(cfg.dataset).load("train" | "val" | "test") -> DataSplit``.

Images come back as uint8 ``[N, C, H, W]``, sequences (audio, waveforms) as float32 ``[N, C, T]`` in
[-1, 1] with the dataset's ``rate``, toy vectors as float32 ``[N, D]``, labels as
int64 ``[N]`` or None; everything on the CPU. "val" is held out of the training data
(``dataset.val_fraction``) for model selection; "test" is for the final report. See
:mod:`gentrain.data.base`.
"""

from gentrain.data.audio import AudioFolder, Waveforms, mu_law_decode, mu_law_encode, read_wav, write_wav
from gentrain.data.base import SPLITS, DataSplit, Dataset
from gentrain.data.images import CIFAR10, MNIST, Digits, FashionMNIST, ImageFolder, read_idx
from gentrain.data.toy import GaussianMixture, Grid25, Moons, Ring8, SwissRoll, ToyDataset

__all__ = [
    "SPLITS",
    "AudioFolder",
    "CIFAR10",
    "MNIST",
    "DataSplit",
    "Dataset",
    "Digits",
    "FashionMNIST",
    "GaussianMixture",
    "Grid25",
    "ImageFolder",
    "Moons",
    "Ring8",
    "SwissRoll",
    "ToyDataset",
    "Waveforms",
    "mu_law_decode",
    "mu_law_encode",
    "read_idx",
    "read_wav",
    "write_wav",
]
