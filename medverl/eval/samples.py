"""Tiny generated copies of the seven benchmark distributions, in the file layouts their users download.

``python -m medverl.eval.samples DIR`` writes them (examples/eval/ ships its output); the tests build their fixtures
with the same function. Every layout carries the quirks the readers must handle: PMC-VQA's ``test_2.csv`` with
"B:"-prefixed choices and ``figures/``, OmniMedVQA's restricted part and its ``modality`` key, MMMU's image options
and two splits, SLAKE in two languages with a missing image, PathVQA in two parquet shards.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# benchmark -> directory under the samples root
LAYOUTS = {"vqa_rad": "vqa-rad", "path_vqa": "path-vqa", "slake": "slake", "pmc_vqa": "pmc-vqa",
           "omnimedvqa": "OmniMedVQA", "mmmu_hm": "MMMU", "medxpertqa_mm": "MedXpertQA"}


def image_bytes(shade: int, fmt: str = "PNG", size: tuple[int, int] = (16, 12)) -> bytes:
    """A small flat image (a distinct grey level per shade) encoded as `fmt`."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, (7 * shade) % 256)).save(buffer, format=fmt)
    return buffer.getvalue()


def _file(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else lambda t: path.write_text(t, encoding="utf-8"))(data)


def _image(path: Path, shade: int) -> None:
    _file(path, image_bytes(shade, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))


def _hf_parquet(path: Path, rows: list[dict]) -> None:
    """Rows as the Hub's parquet export writes them: image columns as struct {bytes, path}, the rest strings."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([(k, image if k.startswith("image") else pa.string()) for k in rows[0]])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _vqa_rad(root: Path) -> None:
    _hf_parquet(root / "data" / "test-00000-of-00001.parquet", [
        {"image": {"bytes": image_bytes(10, "JPEG"), "path": None}, "question": "is there a pleural effusion?",
         "answer": "no"},
        {"image": {"bytes": image_bytes(20, "JPEG"), "path": None}, "question": "is the heart enlarged?",
         "answer": "yes"},
        {"image": {"bytes": image_bytes(30, "JPEG"), "path": None}, "question": "where is the lesion?",
         "answer": "right upper lobe"},
    ])


def _path_vqa(root: Path) -> None:
    _hf_parquet(root / "data" / "test-00000-of-00002.parquet", [
        {"image": {"bytes": image_bytes(40), "path": None}, "question": "does this image show necrosis?",
         "answer": "yes"},
        {"image": {"bytes": image_bytes(50), "path": None}, "question": "what is present?", "answer": "granuloma"},
    ])
    _hf_parquet(root / "data" / "test-00001-of-00002.parquet", [
        {"image": {"bytes": image_bytes(60), "path": None}, "question": "is the epithelium intact?", "answer": "no"},
    ])


def _slake_row(qid: int, img: str, question: str, answer: str, kind: str, lang: str, content: str) -> dict:
    return {"img_id": int(img.split("/")[0][5:]), "img_name": img, "question": question, "answer": answer,
            "q_lang": lang, "location": "Lung", "modality": "X-Ray", "answer_type": kind, "base_type": "vqa",
            "content_type": content, "triple": ["vhead", "_", "_"], "qid": qid}


def _slake(root: Path) -> None:
    _image(root / "imgs" / "xmlab1" / "source.jpg", 70)
    _image(root / "imgs" / "xmlab2" / "source.jpg", 80)
    rows = [
        _slake_row(1, "xmlab1/source.jpg", "Is the lung healthy?", "No", "CLOSED", "en", "Abnormality"),
        _slake_row(2, "xmlab1/source.jpg", "肺部健康吗?", "否", "CLOSED", "zh", "Abnormality"),
        _slake_row(3, "xmlab1/source.jpg", "Which side is the lesion on?", "Left", "CLOSED", "en", "Position"),
        _slake_row(4, "xmlab2/source.jpg", "What disease is shown?", "Pneumonia", "OPEN", "en", "Abnormality"),
        _slake_row(5, "xmlab2/source.jpg", "图中哪个器官有病变?", "肺", "OPEN", "zh", "Organ"),
        _slake_row(6, "xmlab9/source.jpg", "Is there a mass?", "Yes", "CLOSED", "en", "Abnormality"),  # no image
    ]
    _file(root / "test.json", json.dumps(rows, ensure_ascii=False, indent=1))


def _pmc_vqa(root: Path) -> None:
    _image(root / "figures" / "PMC1_fig1.jpg", 90)
    _image(root / "figures" / "PMC2_fig3.jpg", 100)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
                     "Answer", "split"])
    writer.writerow([0, "PMC1_fig1.jpg", "Coronary angiogram.", "Which artery is occluded?", " A: Right Coronary ",
                     " B: Left Anterior Descending ", " C: Left Circumflex ", " D: Posterior Descending ", "B", "test"])
    writer.writerow([1, "PMC2_fig3.jpg", "Axial image with contrast.", "What imaging modality is used?", "A:MRI",
                     "B:CT", "C:Ultrasound, doppler", "D:PET", "B", "test"])
    _file(root / "test_2.csv", buffer.getvalue())


def _omnimedvqa(root: Path) -> None:
    _image(root / "Images" / "Derm" / "a.png", 110)
    _image(root / "Images" / "Chest" / "b.png", 120)
    open_access = root / "QA_information" / "Open-access"
    _file(open_access / "Derm.json", json.dumps([
        {"question_id": "Derm_0", "dataset": "Derm", "question_type": "Disease Diagnosis",
         "question": "What is the diagnosis?", "gt_answer": "Melanoma", "option_A": "Nevus", "option_B": "Melanoma",
         "option_C": "Psoriasis", "option_D": "Eczema", "image_path": "Images/Derm/a.png",
         "modality_type": "Dermoscopy"}], indent=1))
    _file(open_access / "Chest.json", json.dumps([  # this file names the key "modality"
        {"question_id": "Chest_0", "dataset": "Chest", "question_type": "Modality Recognition",
         "question": "What modality is this?", "gt_answer": "X-Ray", "option_A": "CT", "option_B": "X-Ray",
         "image_path": "Images/Chest/b.png", "modality": "X-Ray"}], indent=1))
    _file(root / "QA_information" / "Restricted-access" / "Private.json", json.dumps([  # images not distributed
        {"question_id": "Private_0", "dataset": "Private", "question_type": "Anatomy Identification",
         "question": "Which organ is shown?", "gt_answer": "Liver", "option_A": "Liver", "option_B": "Spleen",
         "image_path": "Images/Private/c.png", "modality_type": "CT(Computed Tomography)"}], indent=1))


def _mmmu_row(sid: str, question: str, options: list[str], answer: str, kind: str, images: dict[int, int]) -> dict:
    row = {"id": sid, "question": question, "options": str(options), "explanation": "", "answer": answer}
    for n in range(1, 8):
        row[f"image_{n}"] = {"bytes": image_bytes(images[n]), "path": f"{sid}_{n}.png"} if n in images else None
    row.update({"img_type": "['Microscopic Images']", "topic_difficulty": "Medium", "question_type": kind,
                "subfield": "Hematology"})
    return row


def _mmmu(root: Path) -> None:
    _hf_parquet(root / "Clinical_Medicine" / "validation-00000-of-00001.parquet", [
        _mmmu_row("validation_Clinical_Medicine_1", "<image 1> What does the smear show?",
                  ["Malaria", "Babesiosis", "Normal smear"], "A", "multiple-choice", {1: 130}),
        _mmmu_row("validation_Clinical_Medicine_2", "Which image shows a target cell?",
                  ["<image 1>", "<image 2>", "<image 3>", "<image 4>"], "C", "multiple-choice",
                  {1: 140, 2: 150, 3: 160, 4: 170}),
        _mmmu_row("validation_Clinical_Medicine_3", "How many cells are in <image 1>?", [], "12", "open", {1: 180}),
    ])
    _hf_parquet(root / "Pharmacy" / "validation-00000-of-00001.parquet", [
        _mmmu_row("validation_Pharmacy_1", "Compare <image 1> and <image 2>: which is the salt form?",
                  ["The first", "The second"], "B", "multiple-choice", {1: 190, 2: 200}),
    ])
    _hf_parquet(root / "Pharmacy" / "dev-00000-of-00001.parquet", [
        _mmmu_row("dev_Pharmacy_1", "<image 1> Which drug class is shown?", ["Statin", "Beta blocker"], "A",
                  "multiple-choice", {1: 210}),
    ])


def _medxpertqa(root: Path) -> None:
    _image(root / "images" / "MM-1-a.jpeg", 220)
    _image(root / "images" / "MM-2-a.jpeg", 230)
    _image(root / "images" / "MM-2-b.jpeg", 240)
    rows = [
        {"id": "MM-1", "question": "A 60-year-old man presents with a lung nodule (image). What is the next step? "
         "Answer Choices: (A) CT (B) MRI (C) Biopsy (D) Observe (E) Surgery",
         "options": {"A": "CT", "B": "MRI", "C": "Biopsy", "D": "Observe", "E": "Surgery"}, "label": "C",
         "images": ["MM-1-a.jpeg"], "medical_task": "Treatment", "body_system": "Respiratory",
         "question_type": "Reasoning"},
        {"id": "MM-2", "question": "Two views of the knee are shown. What is the diagnosis? Answer Choices: "
         "(A) ACL tear (B) Meniscal tear (C) Fracture (D) Effusion (E) Normal",
         "options": {"A": "ACL tear", "B": "Meniscal tear", "C": "Fracture", "D": "Effusion", "E": "Normal"},
         "label": "A", "images": ["MM-2-a.jpeg", "MM-2-b.jpeg"], "medical_task": "Diagnosis",
         "body_system": "Skeletal", "question_type": "Understanding"},
    ]
    _file(root / "MM" / "test.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


# one model's answers to every sample question, in the training format: a few right, a few wrong, some unreadable
PREDICTIONS = [
    ("vqa_rad", 0, "<think>No fluid at the bases.</think><answer>no</answer>"),
    ("vqa_rad", 1, "<think>The cardiac silhouette is wide.</think><answer>yes</answer>"),
    ("vqa_rad", 2, "<think>Opacity in the right lung.</think><answer>right lower lobe</answer>"),
    ("path_vqa", 0, "<think>Cell debris.</think><answer>yes</answer>"),
    ("path_vqa", 1, "<think>Epithelioid histiocytes.</think><answer>granuloma</answer>"),
    ("path_vqa", 2, "The epithelium looks intact."),
    ("slake", 0, "<think>There is an opacity.</think><answer>No</answer>"),
    ("slake", 1, "<think>有阴影。</think><answer>否</answer>"),
    ("slake", 2, "<think>The lesion is on the image's right.</think><answer>Left</answer>"),
    ("slake", 3, "<think>Consolidation.</think><answer>pneumonia</answer>"),
    ("slake", 4, "<think>肺部有病变。</think><answer>肺</answer>"),
    ("pmc_vqa", 0, "<think>The LAD is cut off.</think><answer>B</answer>"),
    ("pmc_vqa", 1, "<think>Cross-sectional, contrast.</think><answer>CT</answer>"),
    ("omnimedvqa", 0, "<think>A projection radiograph.</think><answer>B</answer>"),
    ("omnimedvqa", 1, "<think>Asymmetric pigment network.</think><answer>A</answer>"),
    ("mmmu_hm", 0, "<think>Ring forms in red cells.</think><answer>A</answer>"),
    ("mmmu_hm", 1, "<think>Bull's-eye cells.</think><answer>C</answer>"),
    ("mmmu_hm", 2, "<think>Counting.</think><answer>12</answer>"),
    ("mmmu_hm", 3, "I am not sure."),
    ("medxpertqa_mm", 0, "<think>A spiculated nodule needs tissue.</think><answer>C</answer>"),
    ("medxpertqa_mm", 1, "<think>Fluid in the suprapatellar recess.</think><answer>D</answer>"),
]

_WRITERS = {"vqa_rad": _vqa_rad, "path_vqa": _path_vqa, "slake": _slake, "pmc_vqa": _pmc_vqa,
            "omnimedvqa": _omnimedvqa, "mmmu_hm": _mmmu, "medxpertqa_mm": _medxpertqa}


def write_samples(root: str | Path) -> dict[str, Path]:
    """Write every benchmark's sample under `root`, and ``predictions.jsonl`` (``eval score``'s input) for them;
    returns benchmark -> its directory (the ``--source``)."""
    root = Path(root)
    _file(root / "predictions.jsonl", "".join(
        json.dumps({"data_source": b, "index": i, "response": r}, ensure_ascii=False) + "\n"
        for b, i, r in PREDICTIONS))
    sources = {}
    for benchmark, write in _WRITERS.items():
        sources[benchmark] = root / LAYOUTS[benchmark]
        write(sources[benchmark])
    return sources


if __name__ == "__main__":
    for name, path in write_samples(sys.argv[1] if len(sys.argv) > 1 else "examples/eval").items():
        print(f"{name}: {path}")
