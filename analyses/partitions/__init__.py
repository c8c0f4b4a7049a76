"""Adam-mini partitions: architecture rules -> one learning rate per Hessian block; export and blockings."""
