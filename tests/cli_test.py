"""The programs' shared entry point: user errors as one line, bugs with a traceback."""

import textwrap

from absl.testing import absltest, parameterized

from tests import helpers


def _run_python(source: str, *args, home=None):
    return helpers.run_python("-c", textwrap.dedent(source), *args, home=home)


class RunTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("user_error", "errors.ConfigError('config.data.set_size must be >= 2, got 0')"),
        ("data_error", "omniglot.DataError('no data directory: pass --data_dir')"),
    )
    def test_a_users_mistake_is_one_line_and_exit_status_1(self, raised):
        done = _run_python(f"""
            from oneshot_tf import cli, errors
            from oneshot_tf.data import omniglot
            def main(argv):
                raise {raised}
            cli.run(main)
        """)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr.strip().splitlines()[-1][:7], "error: ")
        self.assertIn(raised.split("'")[1], done.stderr)
        self.assertNotIn("Traceback", done.stderr)

    def test_a_bug_keeps_its_traceback(self):
        done = _run_python("""
            from oneshot_tf import cli
            def main(argv):
                raise KeyError('a bug')
            cli.run(main)
        """)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("Traceback", done.stderr)
        self.assertIn("KeyError: 'a bug'", done.stderr)

    def test_flags_and_return_value_pass_through(self):
        done = _run_python(
            """
            from absl import flags
            from oneshot_tf import cli
            _NAME = flags.DEFINE_string("name", None, "")
            def main(argv):
                print("hello", _NAME.value, argv[1:])
            cli.run(main)
            """,
            "--name=omniglot",
            "extra",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "hello omniglot ['extra']")

    def test_a_flag_value_starting_with_a_tilde_is_under_home(self):
        home = self.create_tempdir().full_path
        done = _run_python(
            """
            from absl import flags
            from oneshot_tf import cli
            _A = flags.DEFINE_string("a", None, "")
            _B = flags.DEFINE_string("b", None, "")
            _C = flags.DEFINE_string("c", None, "")
            def main(argv):
                print(_A.value, _B.value, _C.value, argv[1:])
            cli.run(main)
            """,
            "--a=~/runs/x", "--b=a~b", "--c=~", "~/positional",
            home=home,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), f"{home}/runs/x a~b {home} ['~/positional']")

    def test_main_reads_a_workdir_under_home(self):
        home = self.create_tempdir().full_path
        done = helpers.run_python(
            "-m", "oneshot_tf.main", "--model=vae", "--config=configs/vae.py:tiny", "--mode=eval",
            "--workdir=~/runs/vae", f"--data_dir={helpers.DATA_DIR}", home=home,
        )  # fmt: skip
        self.assertEqual(done.returncode, 1, done.stderr[-2000:])
        self.assertIn(f"error: no checkpoint in {home}/runs/vae/checkpoints", done.stderr)

    def test_the_server_given_a_folder_without_models_says_so_in_one_line(self):
        home = self.create_tempdir().full_path
        done = helpers.run_python("-m", "oneshot_tf.serve", "--export_dir=~/exports", "--port=0", home=home)
        self.assertEqual(done.returncode, 1, done.stderr[-2000:])
        self.assertEqual(done.stderr.strip().splitlines()[-1], f"error: --export_dir {home}/exports is not a folder")
        self.assertNotIn("Traceback", done.stderr)

    @parameterized.named_parameters(
        ("seqgen_windows", "seqgen_windows.py", "--config=configs/seqgen.py:tiny"),
        ("few_shot_accuracy", "few_shot_accuracy.py", "--config=configs/statistician.py:tiny"),
    )
    def test_a_tool_given_a_workdir_without_a_checkpoint_says_so_in_one_line(self, tool, config):
        workdir = self.create_tempdir().full_path
        done = helpers.run_tool(tool, config, f"--workdir={workdir}", f"--data_dir={helpers.DATA_DIR}")
        self.assertEqual(done.returncode, 1, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("error: ") and "checkpoint" in last, last)
        self.assertIn(workdir, last)
        self.assertNotIn("Traceback", done.stderr)

    @parameterized.named_parameters(
        ("seqgen_windows", ["seqgen_windows.py", "--config=configs/seqgen.py:tiny", "--export={}"], "--export"),
        ("compare_exports", ["compare_exports.py", "--a={}", "--b={}"], "--a"),
    )
    def test_a_tool_given_a_folder_without_a_saved_model_names_the_flag(self, command, flag):
        folder = self.create_tempdir().full_path
        done = helpers.run_tool(command[0], *(a.format(folder) for a in command[1:]), f"--data_dir={helpers.DATA_DIR}")
        self.assertEqual(done.returncode, 1, done.stderr[-2000:])
        self.assertEqual(
            done.stderr.strip().splitlines()[-1],
            f"error: {flag}='{folder}' is neither a SavedModel folder nor a model base path holding one "
            "(<path>/<version>/saved_model.pb)",
        )
        self.assertNotIn("Traceback", done.stderr)


if __name__ == "__main__":
    absltest.main()
