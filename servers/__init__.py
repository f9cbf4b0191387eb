"""The ServerApp and the server half of the method adapter: round driver, aggregation
rules, evaluation, and split learning's label party."""
