"""Recipe kinds: one module each, declaring its KindSpec (the contract, in
aistack.recipe.kinds). The registry finds them by listing this package, so adding a kind
is adding a module here and its jobs in jobs/, nothing else."""
