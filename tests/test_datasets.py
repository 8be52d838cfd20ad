"""Dataset readers: BAPPS 2AFC / JND layouts made in tmp_path, MOS CSVs, live-dev."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchmmd.evaluation.datasets import BAPPS2AFC, BAPPSJND, DatasetError, MOSDataset
from patchmmd.io import save_image

LIVE_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "live-dev"


def make_2afc(root: Path, subsets: dict[str, list[float]], size: int = 64, kind: str = "2afc") -> Path:
    """A BAPPS-layout folder: per subset, triplets of constant-grey images and judge/same .npy files."""
    parts = ("ref", "p0", "p1") if kind == "2afc" else ("p0", "p1")
    label = "judge" if kind == "2afc" else "same"
    for s, values in subsets.items():
        base = root / kind / "val" / s
        for p in (*parts, label):
            (base / p).mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(values):
            for j, p in enumerate(parts):
                save_image(torch.full((3, size, size), 0.2 + 0.1 * j + 0.01 * i), base / p / f"{i:06d}.png")
            np.save(base / label / f"{i:06d}.npy", np.array([v], dtype=np.float32))
    return root


def test_2afc_reader(tmp_path: Path) -> None:
    root = make_2afc(tmp_path, {"traditional": [0.0, 0.5, 1.0], "cnn": [0.25]}, size=256)
    ds = BAPPS2AFC(root)
    assert ds.subsets == ["traditional", "cnn"]  # LPIPS's order, not alphabetical
    assert len(ds) == 4
    item = ds[1]
    assert item.ref.shape == (3, 64, 64) and item.p0.dtype == torch.float32
    assert 0 <= float(item.p1.min()) and float(item.p1.max()) <= 1
    assert item.judge == pytest.approx(0.5) and item.subset == "traditional" and item.name == "000001"
    assert [it.judge for it in ds] == pytest.approx([0.0, 0.5, 1.0, 0.25])
    assert BAPPS2AFC(root, load_size=None)[0].ref.shape == (3, 256, 256)
    # other ways to point at the data, and subset selection
    assert len(BAPPS2AFC(root / "2afc")) == 4
    assert len(BAPPS2AFC(root / "2afc" / "val")) == 4
    assert BAPPS2AFC(root / "2afc" / "val" / "cnn").subsets == ["cnn"]
    assert BAPPS2AFC(root, "cnn").subsets == ["cnn"]
    assert BAPPS2AFC(root, "traditional, cnn").subsets == ["traditional", "cnn"]  # spaces after commas
    assert BAPPS2AFC(root, ["val/traditional"]).subsets == ["traditional"]


def test_jnd_reader(tmp_path: Path) -> None:
    root = make_2afc(tmp_path, {"traditional": [1.0, 0.0], "cnn": [0.5]}, kind="jnd")
    ds = BAPPSJND(root)
    assert ds.subsets == ["traditional", "cnn"] and len(ds) == 3
    assert ds[2].same == pytest.approx(0.5) and ds[0].p0.shape == (3, 64, 64)


def test_bapps_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        BAPPS2AFC(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no BAPPS 2afc data"):
        BAPPS2AFC(tmp_path)
    root = make_2afc(tmp_path / "a", {"traditional": [0.5, 0.5]})
    with pytest.raises(FileNotFoundError, match="subset folder 'color' not found"):
        BAPPS2AFC(root, "color")
    (root / "2afc" / "val" / "traditional" / "p1" / "000001.png").unlink()
    with pytest.raises(DatasetError, match=r"unmatched files .*p1/ lacks 1: 000001"):
        BAPPS2AFC(root)
    empty = tmp_path / "b" / "2afc" / "val" / "cnn"
    for p in ("ref", "p0", "p1", "judge"):
        (empty / p).mkdir(parents=True)
    with pytest.raises(DatasetError, match="folder is empty"):
        BAPPS2AFC(tmp_path / "b")
    bad = make_2afc(tmp_path / "c", {"cnn": [0.5]})
    np.save(bad / "2afc" / "val" / "cnn" / "judge" / "000000.npy", np.array([3.0]))
    with pytest.raises(DatasetError, match=r"must hold one fraction in \[0, 1\]"):
        BAPPS2AFC(bad)[0]
    with pytest.raises(ValueError, match="load_size"):
        BAPPS2AFC(bad, load_size=0)


def make_mos(tmp_path: Path, n: int = 6) -> Path:
    ref = torch.full((3, 32, 48), 0.5)
    save_image(ref, tmp_path / "ref.png")
    rows = ["ref,dist,kind,mos"]
    for i in range(n):
        save_image((ref + 0.04 * (i + 1)).clamp(0, 1), tmp_path / f"d{i}.png")
        rows.append(f"ref.png,d{i}.png,{'ab'[i % 2]},{90 - 10 * i}")
    rows.append("ref.png,ref.png,a,")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labels.csv"


def test_mos_reader(tmp_path: Path) -> None:
    csv_path = make_mos(tmp_path)
    ds = MOSDataset(csv_path, group_column="kind")
    assert (ds.reference_column, ds.distorted_column, ds.score_column) == ("ref", "dist", "mos")
    assert len(ds) == 7 and ds.scored == list(range(6))
    item = ds[0]
    assert item.reference.shape == (3, 32, 48) and item.score == 90.0 and item.group == "a"
    assert ds[6].score is None
    assert MOSDataset(csv_path, root=tmp_path, score_column="mos").groups[0] is None


def test_mos_errors(tmp_path: Path) -> None:
    csv_path = make_mos(tmp_path)
    with pytest.raises(FileNotFoundError, match="labels CSV not found"):
        MOSDataset(tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match="column 'nope' is not in the header") as info:
        MOSDataset(csv_path, score_column="nope")
    assert info.value.parameter == "score_column" and "--" not in str(info.value)  # front ends name their flag
    (tmp_path / "d3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) named in .* not found under .*: d3.png"):
        MOSDataset(csv_path)
    (tmp_path / "bad.csv").write_text("reference,distorted,dmos\nref.png,ref.png,high\n")
    with pytest.raises(DatasetError, match="line 2: score 'high'"):
        MOSDataset(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("reference,distorted,dmos\n")
    with pytest.raises(DatasetError, match="no data rows"):
        MOSDataset(tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("a,b,c\nref.png,ref.png,1\n")
    with pytest.raises(DatasetError, match="cannot find the reference path column") as info:
        MOSDataset(tmp_path / "cols.csv")
    assert info.value.parameter == "reference_column" and "--" not in str(info.value)


def test_mos_size_mismatch(tmp_path: Path) -> None:
    save_image(torch.zeros(3, 8, 8), tmp_path / "a.png")
    save_image(torch.zeros(3, 8, 9), tmp_path / "b.png")
    (tmp_path / "l.csv").write_text("reference,distorted,dmos\na.png,b.png,1\n")
    with pytest.raises(DatasetError, match="differ in size"):
        MOSDataset(tmp_path / "l.csv")[0]


def test_live_dev() -> None:
    if not (LIVE_DEV / "labels.csv").exists():
        pytest.skip(f"live-dev not found at {LIVE_DEV}")
    ds = MOSDataset(LIVE_DEV / "labels.csv", group_column="distortion")
    assert len(ds) == 29 and len(ds.scored) == 27
    unscored = [i for i in range(len(ds)) if ds.scores[i] is None]
    item = ds[unscored[0]]
    assert item.reference.shape == (3, 512, 768) and torch.equal(item.reference, item.distorted)


def test_mos_malformed_label_files(tmp_path: Path) -> None:
    """Malformed rows are refused with the CSV's line, never read into wrong columns or left to crash."""
    save_image(torch.zeros(3, 8, 8), tmp_path / "ref.png")
    for i in range(3):
        save_image(torch.full((3, 8, 8), 0.1 * (i + 1)), tmp_path / f"d{i}.png")
    head = "reference,distorted,dmos\n"
    good = "ref.png,d0.png,1\nref.png,d1.png,2\nref.png,d2.png,3\n"

    def read(text: str | bytes, **kw: object) -> MOSDataset:
        path = tmp_path / "labels.csv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return MOSDataset(path, **kw)  # type: ignore[arg-type]

    # BOM and CRLF line ends are fine
    assert read(b"\xef\xbb\xbf" + (head + good).replace("\n", "\r\n").encode()).scores == [1.0, 2.0, 3.0]
    # a row with more fields than the header (a stray comma shifts the columns), even an otherwise blank one
    with pytest.raises(DatasetError, match=r"line 3: 4 fields, but the header has 3"):
        read(head + "ref.png,d0.png,1\nref.png,d1.png,2,9\n")
    with pytest.raises(DatasetError, match=r"line 2: 4 fields, but the header has 3"):
        read(head + ",,,x\n" + good)
    # a row cut short: not an unscored row
    with pytest.raises(DatasetError, match=r"line 3: 2 fields, but the header has 3"):
        read(head + "ref.png,d0.png,1\nref.png,d1.png\n")
    # a column named twice: which one holds the scores?
    with pytest.raises(DatasetError, match="column 'dmos' appears 2 times") as info:
        read("reference,distorted,dmos,dmos\nref.png,d0.png,1,9\n")
    assert info.value.parameter == "score_column"
    # the same pair twice would count twice in the correlations
    with pytest.raises(DatasetError, match=r"line 4: the pair \(ref.png, ./d0.png\) is already on line 2"):
        read(head + good.replace("d2.png", "./d0.png"))
    # paths leading out of the root, relative or absolute
    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.raises(DatasetError, match=r"line 2: path '../ref.png' leads out of the image root") as info:
        read(head + "../ref.png,../d0.png,1\n", root=sub)
    assert info.value.parameter == "root"
    with pytest.raises(DatasetError, match="leads out of the image root"):
        read(head + f"ref.png,{tmp_path / 'd0.png'},1\n")
    with pytest.raises(DatasetError, match="leads out of the image root"):
        read(head + "ref.png,sub/../../d0.png,1\n", root=sub)
    # line numbers are the file's, past blank rows and fields quoted over two lines
    with pytest.raises(DatasetError, match="line 5: score 'x'"):
        read(head + "\n,,\nref.png,d1.png,2\nref.png,d2.png,x\n")
    with pytest.raises(DatasetError, match="line 4: score 'zz'"):
        read(head + '"ref.png","d0\n.png",1\nref.png,d2.png,zz\n')
    # not UTF-8
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        read(head.encode() + b"ref.png,d\xe9.png,1\n")


def test_bapps_split_is_not_mislabelled(tmp_path: Path) -> None:
    """A folder of the 'train' split read with split='val' (the default), or the reverse, is refused: the results
    would carry the wrong split's name. The matching split is read as before."""
    root = make_2afc(tmp_path, {"traditional": [0.5]})
    val = root / "2afc" / "val"
    with pytest.raises(ValueError, match=r"is BAPPS's 'val' split, but split='train' was asked for"):
        BAPPS2AFC(val, split="train")
    with pytest.raises(ValueError, match=r"is BAPPS's 'val' split, but split='train'"):
        BAPPS2AFC(val / "traditional", split="train")  # one subset folder inside the other split
    assert BAPPS2AFC(val).split == "val" and BAPPS2AFC(val / "traditional").subsets == ["traditional"]
    train = root / "2afc" / "train"
    val.rename(train)
    with pytest.raises(ValueError, match=r"is BAPPS's 'train' split, but split='val'"):
        BAPPS2AFC(train)
    assert len(BAPPS2AFC(train, split="train")) == 1 and len(BAPPS2AFC(root, split="train")) == 1
    with pytest.raises(FileNotFoundError, match="no BAPPS 2afc data"):
        BAPPS2AFC(root)  # no val split at all
    # a folder of subsets named otherwise is read with any split, as before
    other = tmp_path / "mine"
    train.rename(other)
    assert BAPPS2AFC(other).subsets == ["traditional"]
