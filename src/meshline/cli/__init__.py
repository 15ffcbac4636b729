"""The `meshline` command line. Commands only wire things; logic lives in the library."""
