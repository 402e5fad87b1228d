"""Test helpers shared by tests/inference, tests/report/test_export.py and tests/serve (loaded by file path):
a tiny FedMRG run folder whose generic and specialized adapters differ, and radiograph files to read."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

TESTS = Path(__file__).resolve().parents[1]


def load_by_path(name: str, path: Path) -> ModuleType:
    """Import a test helper module from its file (test folders are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_run(root: Path, *, sites: tuple[str, ...] = ("site-1", "site-2")) -> Path:
    """``root/run``: a ``fedmrg train``-style run folder of a tiny random model (Llama 32 wide, 2 layers; ResNet
    preset ``resnet-tiny``, 32 px) with random adapters: G and every site's S2 differ (so generic and personalized
    reports differ). S1 = G, as after :func:`fedmrg.report.shared_state.start_round`."""
    from fedmrg.report.checkpoint import save_checkpoint
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.run_config import run_config_from_dict
    from fedmrg.report.shared_state import get_private_state, get_shared_state, start_round

    llama = load_by_path("_report_conftest", TESTS / "report" / "conftest.py").save_tiny_llama(root / "llama")
    config = run_config_from_dict(
        {
            "encoder": {"preset": "resnet-tiny", "image_size": 32},
            "decoder": {"path": str(llama), "mode": "llm", "max_report_tokens": 24},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "generation": {"num_beams": 1, "max_new_tokens": 12},
            "training": {"seed": 0},
        },
        source="tiny test config",
        progress=False,
    )
    torch.manual_seed(0)
    model = FedMRGModel(config.model)
    g = torch.Generator().manual_seed(1)
    private = {}
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "lora_" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        for site in sites:  # each site its own S2
            for name, p in model.decoder.named_parameters():
                if "lora_" in name and ".spec_local." in name:
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
            private[site] = get_private_state(model)
    start_round(model)
    run = root / "run"
    save_checkpoint(run, model, config, shared_state=get_shared_state(model), private_states=private)
    return run


def radiograph(size: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth grey image ``float (size, size)`` in [0, 1] with a bright disc (differs by seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy = rng.uniform(0.3, 0.7, 2)
    img = 0.3 + 0.4 * xx + 0.3 * ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.04)
    return np.clip(img, 0, 1)


def write_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(path)
    return path


def write_dicom(path: Path, image: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 16,
                frames: int = 1, pixels: bool = True) -> Path:  # fmt: skip
    """A DICOM Part 10 file of ``image`` in [0, 1] stored as unsigned ``bits``-bit values, with a window spanning
    the stored range; MONOCHROME1 stores inverted values (so it displays as ``image``)."""
    top = 2**bits - 1
    values = np.round((1.0 - image if photometric == "MONOCHROME1" else image) * top).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image for Presentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Test^Patient", "P-0001", "A-42"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = (top + 1) / 2, top + 1
    if frames > 1:
        ds.NumberOfFrames = frames
        values = np.stack([values] * frames)
    if pixels:
        ds.PixelData = values.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
