"""What the policy is trained and evaluated on: examples, the built-in tasks, dataset files, and their prompts.

``example`` (the Example record) ← ``synthetic`` (drawing tiers, the train/eval split) ← ``arith``, ``tiny_arith``,
``tiny_chain`` ← ``registry`` (the built-in tasks by name); ``files`` reads dataset files; ``prompts`` turns examples
into token ids and score masks; ``tiny_model`` builds the testbed models of the two tiny tasks.
"""
