"""Linear / kNN evaluation entry point: ``ssmix-linear-eval CONFIG [key=value ...]`` (:mod:`.run`)."""
