"""The bottom layer: atomic files and JSON (`files`), images (`images`), the video writer (`video`),
one writer per output folder (`lock`).

Everything that writes a file the user keeps goes through `files.atomic_path`, so an interrupted
run never leaves a truncated output in place of a good one, and a full disk is one line
(`files.DiskFull`), never a traceback.
"""
