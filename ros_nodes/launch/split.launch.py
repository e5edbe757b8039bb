"""The split graph on a recorded drive: `edge replay` -> perception node -> LLM node, on the replay's /clock.

    ros2 launch mpnp_edge split.launch.py bag:=/data/drives/day_to_night policy:=all

The perception node (/mpnp_edge_perception: occupancy, plan, modality tokens) and the LLM node (/mpnp_edge_llm:
questions -> answers) start together; the replay starts when the perception node reports its subscriptions, then
waits `delay` seconds for discovery. The launch ends if either node exits. Arguments: those of drive.launch.py but
`role` (ros_nodes/launch_commands.py SPLIT_ARGUMENTS); both nodes get the same parameters file and options.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessIO
from launch.substitutions import LaunchConfiguration

from ros_nodes.launch_commands import (RUNTIME_READY, SPLIT_ARGUMENTS, ReadyWatch, replay_command,
                                       split_commands)


def _start(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in SPLIT_ARGUMENTS}
    perception_cmd, llm_cmd = split_commands(values)
    perception = ExecuteProcess(cmd=perception_cmd, name="edge_perception", output="screen",
                                on_exit=Shutdown(reason="perception node exited"))
    llm = ExecuteProcess(cmd=llm_cmd, name="edge_llm", output="screen", on_exit=Shutdown(reason="LLM node exited"))
    replay = ExecuteProcess(cmd=replay_command(values), name="edge_replay", output="screen")
    ready = ReadyWatch(RUNTIME_READY)
    start_replay = OnProcessIO(target_action=perception,
                               on_stderr=lambda event: [replay] if ready.feed(event.text) else None)
    return [perception, llm, RegisterEventHandler(start_replay)]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=a.default, description=a.description, choices=a.choices)
          for name, a in SPLIT_ARGUMENTS.items()),
        OpaqueFunction(function=_start),
    ])
