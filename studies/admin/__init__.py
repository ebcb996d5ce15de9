"""The researcher admin, one module per admin: study (arms and tasks inline, go live, pause,
close), versions, endpoints, participants (transcripts, exclusions, erasure), erasure records; the
study's monitor and report pages are `monitor` and `reports`. Importing the package registers
every admin with the site."""

from studies.admin import endpoints, erasure, participants, study, versions

__all__ = ["endpoints", "erasure", "participants", "study", "versions"]
