"""The command line: user mistakes are one line, bugs keep their traceback."""

from unittest import mock

from absl.testing import absltest, flagsaver

from oneshot_tf import configs, errors, main, precision
from oneshot_tf.data import omniglot


class MainErrorsTest(absltest.TestCase):
    def _run_main_with(self, error):
        with (
            flagsaver.flagsaver(model="vae"),
            precision.policy_scope("float32"),
            mock.patch.object(main, "run_modes", side_effect=error),
        ):
            main.main(["oneshot_tf.main"])

    def test_user_errors_print_one_line(self):
        for error in (
            errors.CheckpointError("no checkpoint in runs/vae/checkpoints: run --mode=train first"),
            errors.ConfigError("unknown schedule 'linear'"),
            omniglot.DataError("gmn28 source: no train_small.npz in /nowhere"),
        ):
            with self.assertRaises(SystemExit) as exit_:
                self._run_main_with(error)
            self.assertEqual(exit_.exception.code, f"error: {error}")

    def test_programming_errors_keep_their_traceback(self):
        for error in (ValueError("Dimensions must be equal, but are 3 and 4"), FileNotFoundError("/tmp/x")):
            with self.assertRaises(type(error)):
                self._run_main_with(error)

    def test_config_of_another_model(self):
        with self.assertRaisesRegex(errors.ConfigError, "--model=gmn but the config is for 'vae'"):
            main.load_config("gmn", configs.get_config("vae"))

    def test_unknown_config_name(self):
        with self.assertRaisesRegex(errors.ConfigError, "no config 'gan'"):
            configs.get_config("gan")


if __name__ == "__main__":
    absltest.main()
