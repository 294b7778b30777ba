"""The few named errors of readfirst. The CLI turns each into one sentence for the user.

Anything that is not a ReadfirstError is a bug and is shown as a traceback, never swallowed.
"""


class ReadfirstError(Exception):
    """Base of every error the user can act on."""


class EngineUnavailable(ReadfirstError):
    """No Docker engine answers, and none could be started."""


class ImageBuildError(ReadfirstError):
    """The base image could not be built."""


class SourceError(ReadfirstError):
    """A target's source could not be fetched or prepared."""


class PatchRejected(ReadfirstError):
    """A patch is unsafe (absolute paths, '..', .git/, escaping symlinks) or touches protected files."""


class PatchDoesNotApply(ReadfirstError):
    """A patch is safe but does not apply to its base; the message names the file and hunk."""


class ModelError(ReadfirstError):
    """A model file is missing, corrupt, or could not be synthesized."""


class SandboxError(ReadfirstError):
    """The sandbox could not run a command (not: the command failed; that is a result)."""


class BuildFailed(ReadfirstError):
    """The baseline does not build; candidates' build failures are results, not errors."""


class BaselineBroken(ReadfirstError):
    """No configuration of the baseline passes its own checks; nothing can be measured against it."""


class KnowledgeBaseError(ReadfirstError):
    """The knowledge base cannot be opened, written or queried (locked, unreadable, server down, bad input)."""


class RunFolderRefused(ReadfirstError):
    """A run folder holds something other than plain data (code named in its checkpoints, an encoding readfirst
    never writes, bytes that decode as nothing): it is not opened, since reading it could run that code."""
