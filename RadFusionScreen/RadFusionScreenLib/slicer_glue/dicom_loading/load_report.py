"""What "Load DICOM folder" loaded and what it did not: the report behind the status-bar
headline and the message box, and the error raised when nothing could be loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MAX_LISTED = 10


@dataclass(frozen=True)
class LoadProblem:
    """Something in the folder that did not load: ``kind`` is "import", "file", "series" or
    "segmentation"; ``subject`` the folder, file path or series UID it concerns."""

    kind: str
    subject: str
    message: str

    def describe(self) -> str:
        subject = Path(self.subject).name if self.kind in ("file", "segmentation") else self.subject
        return f"{subject}: {self.message}"


@dataclass(frozen=True)
class EngineSegmentation:
    """A segmentation node that the engine's reader made from a SEG / RTSTRUCT file."""

    node_id: str
    node_name: str
    kind: str  # "SEG" or "RTSTRUCT"
    source: str  # the file
    referenced_series_uid: str
    volume_node_id: str
    volume_name: str
    matched_by: str  # how the volume was found
    segment_names: tuple[str, ...]
    reason: str  # why Slicer did not load it

    def describe(self) -> str:
        names = ", ".join(self.segment_names[:_MAX_LISTED])
        more = f", ... ({len(self.segment_names)} in all)" if len(self.segment_names) > _MAX_LISTED else ""
        count = f"{len(self.segment_names)} segment{'s' if len(self.segment_names) != 1 else ''}"
        return (f"{self.kind} {self.node_name!r} ({Path(self.source).name}): loaded by RadFusionScreen's own reader "
                f"onto volume {self.volume_name!r} (series {self.referenced_series_uid or '?'}; matched by "
                f"{self.matched_by}): {count}: {names}{more}. Why: {self.reason}")


@dataclass
class DicomLoadReport:
    """What "Load DICOM folder" loaded and what it did not."""

    folder: str
    volume_node_ids: list[str] = field(default_factory=list)
    segmentation_node_ids: list[str] = field(default_factory=list)
    other_node_ids: list[str] = field(default_factory=list)  # other nodes plugins added (tables, sequences, ...)
    partial_node_ids: list[str] = field(default_factory=list)  # nodes left by a plugin whose load failed
    engine_segmentations: list[EngineSegmentation] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)

    def add_problem(self, kind: str, subject: str | Path, message: str) -> None:
        self.problems.append(LoadProblem(kind, str(subject), message))

    @property
    def loaded_anything(self) -> bool:
        return bool(self.volume_node_ids or self.segmentation_node_ids or self.other_node_ids)

    @property
    def needs_attention(self) -> bool:
        """True when the person should read :meth:`summary` (problems, or the engine's reader was used)."""
        return bool(self.problems or self.engine_segmentations)

    def headline(self) -> str:
        """One line for the status bar."""
        parts = [counted(len(self.volume_node_ids), "image volume"),
                 counted(len(self.segmentation_node_ids), "segmentation")]
        if self.engine_segmentations:
            parts.append(f"{len(self.engine_segmentations)} of them by RadFusionScreen's SEG/RTSTRUCT reader")
        if self.other_node_ids:
            parts.append(counted(len(self.other_node_ids), "other node"))
        text = f"Loaded from {self.folder}: " + ", ".join(parts)
        if self.problems:
            text += f"; {counted(len(self.problems), 'problem')} (see the details)"
        return text

    def summary(self) -> str:
        """The headline, the segmentations the engine loaded, and every problem (for a message box)."""
        lines = [self.headline() + "."]
        lines += [item.describe() + "." for item in self.engine_segmentations]
        if self.partial_node_ids:
            lines.append(f"{counted(len(self.partial_node_ids), 'node')} left in the scene by a failed Slicer load "
                         "(not selected): " + ", ".join(self.partial_node_ids[:_MAX_LISTED]))
        if self.problems:
            lines.append("Not loaded:")
            files = [p for p in self.problems if p.kind == "file"]
            others = [p for p in self.problems if p.kind != "file"]
            lines += [f"- {p.describe()}" for p in others]
            lines += [f"- {p.describe()}" for p in files[:_MAX_LISTED]]
            if len(files) > _MAX_LISTED:
                lines.append(f"- ... and {len(files) - _MAX_LISTED} more files that were not imported")
        return "\n".join(lines)

    def choose_inputs(self, scene: Any) -> tuple[Any | None, Any | None]:
        """(volume, segmentation) for the module: the first loaded segmentation whose reference
        geometry is a loaded volume, with that volume; else the first volume and first segmentation."""
        import slicer

        volumes = [scene.GetNodeByID(i) for i in self.volume_node_ids]
        volumes = [v for v in volumes if v is not None]
        segmentations = [scene.GetNodeByID(i) for i in self.segmentation_node_ids]
        segmentations = [s for s in segmentations if s is not None]
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        for segmentation in segmentations:
            reference = segmentation.GetNodeReference(role)
            if reference is not None and reference.GetID() in self.volume_node_ids:
                return reference, segmentation
        return (volumes[0] if volumes else None), (segmentations[0] if segmentations else None)


class DicomLoadError(ValueError):
    """Nothing in the folder could be loaded; ``report`` says why."""

    def __init__(self, report: DicomLoadReport, headline: str) -> None:
        self.report = report
        details = report.summary().split("\n", 1)[1] if "\n" in report.summary() else ""
        super().__init__(headline + (f"\n{details}" if details else ""))


def counted(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1 ("1 file", "3 files")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
