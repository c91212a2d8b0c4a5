"""Training front-ends on verl: the CPT dataset class, and ``medverl validate`` (prepared data through verl's
datasets)."""
