"""MLPerf LoadGen harness around the calibrated int8 model, and the command line."""
