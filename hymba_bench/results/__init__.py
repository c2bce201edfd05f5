"""Results: the records a run writes (one schema, one reader and writer), the tables in
Table 1's layout, and the plots."""
