"""Registered responses, one module each (see :class:`radar_ad.response.Response`).

Every module in this package is imported by the registry the first time a
response name is looked up; a new response is one new module here plus its test.
"""
