"""The ssm-profile terminal UI (Textual): `ssm-profile [MODEL | RUN_DIR]`; the app is `ssm_profile.tui.app.SSMProfileApp`."""
