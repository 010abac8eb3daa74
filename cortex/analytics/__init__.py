"""Analytics for the business owners: accounts' access, the query API and exports.

Every read of the analytics store goes through :class:`cortex.analytics.scope.Scope`, which
hands out the sink's tables already limited to one org the caller may read.
"""
