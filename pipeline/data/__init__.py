"""Labelled image data.

``config`` (``DataConfig``), ``sources`` (the loader registry and the image sets a loader
returns), ``subsets`` (which positions go to calibration / validation / test / train,
recorded per run), ``decode`` (a ``DataLoader`` with workers, items checked by split and
index), ``store`` (raw uint8 splits normalised on the device batch by batch; the streamed
training split), ``splits`` (``load_data``, the one entry point), ``preprocess`` (what an
export records to repeat it).
"""
