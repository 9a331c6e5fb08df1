"""One set of factories for the tests: the cast of users and their API clients, feature
data, model packages (good and bad), and runs with their quality results."""
