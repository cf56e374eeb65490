"""apport.hook_ui: the question interface a hook's ``ui`` argument has.

Hooks run unattended here, so the ``ui`` they get is a
:class:`NoninteractiveHookUI`: every question is answered None, as apport's
whoopsie-upload-all does.
"""

import time


class HookUI:
    """Questions a hook may ask; *ui* answers them (``ui_info_message``, ``ui_question_yesno``, …)."""

    def __init__(self, ui):
        self.ui = ui

    def _ask(self, method, *args):
        function = getattr(self.ui, method, None)
        return function(*args) if function else None

    def information(self, text):
        return self._ask("ui_info_message", "", text)

    def yesno(self, text):
        return self._ask("ui_question_yesno", text)

    def choice(self, text, options, multiple=False):
        return self._ask("ui_question_choice", text, options, multiple)

    def file(self, text):
        return self._ask("ui_question_file", text)

    def process_event(self):
        """Nothing to process: questions are answered in the hook's own thread."""


class NoninteractiveHookUI(HookUI):
    """Nobody is there to answer: every question gets None."""

    def __init__(self):
        super().__init__(None)

    def __repr__(self):
        return f"{self.__class__.__name__}()"

    def information(self, text):
        return None

    def yesno(self, text):
        return None

    def choice(self, text, options, multiple=False):
        return None

    def file(self, text):
        return None

    def process_event(self):
        time.sleep(0.1)
