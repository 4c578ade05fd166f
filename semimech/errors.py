"""Exceptions raised for bad input: each names the problem and the fix."""


class SemimechError(ValueError):
    """Base class: input that semimech cannot use as given."""


class DesignError(SemimechError):
    """The data or its annotation cannot form a valid experimental design."""


class PredictionError(SemimechError):
    """A prediction was requested that the fitted model cannot answer."""


class InferenceError(RuntimeError):
    """Inference failed (non-finite loss, failed solves); the message says what to try."""


class SavedFitError(SemimechError):
    """A saved fit folder is damaged, was edited by hand, or is not a semimech fit."""


class DuplicateNamesWarning(UserWarning):
    """Rows of a design share a name (a frame's index after ``pd.concat``, concatenated AnnData): selecting a cell
    by name in a fit's ``DataTree`` is then ambiguous."""


class PopulationOnlyWarning(UserWarning):
    """A prediction answers some conditions from a learned population alone (no data, no side information)."""


class UnsolvedWarning(UserWarning):
    """Some posterior draws found no steady state for a predicted condition; its answer is conditioned on one."""


class CompiledCodeWarning(ResourceWarning):
    """The process holds so much compiled code that its memory mappings near the kernel's limit."""
