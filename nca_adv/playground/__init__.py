"""The article's two playgrounds as a local web app (``python -m experiments.playground``).

- :mod:`~nca_adv.playground.protocol`: the browser's JSON actions, validated field by field.
- :mod:`~nca_adv.playground.models`: the models, adversaries, perturbations and digits a
  server offers (loaded once, at start-up; the browser can only pick among them by name).
- :mod:`~nca_adv.playground.sessions`: one tab's state and actions as plain classes
  (:class:`MnistSession`, :class:`LizardSession`) over the library's own jitted steps and
  step transforms; tested without a browser.
- :mod:`~nca_adv.playground.server`: the thin aiohttp layer (pages, one WebSocket per
  session, the CA off the event loop).
"""
