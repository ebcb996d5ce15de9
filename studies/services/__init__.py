"""Services own the study logic: keyword-only `<entity>_<action>` functions; one Event a change."""
