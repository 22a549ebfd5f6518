"""Calibration: texts in, token windows out (``data``), and the passes over them that gather what
the criteria read (``stats``), with their memory bound (``memory``) and disk offload (``offload``)."""
