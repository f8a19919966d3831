"""File formats without torch (the API reads them): npz written and inspected piece by piece
(:mod:`core.formats.npzstream`) and the validation of uploaded data sets (:mod:`core.formats.uploads`)."""
