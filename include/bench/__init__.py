"""Scale benchmark (``make bench``): Data Out against the pandas way and the COPY floor on one Postgres."""
