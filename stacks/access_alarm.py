"""An alarm on API calls to one S3 bucket made by anyone but the deploy
role, as one Pulumi component.

CloudTrail hands every API call to EventBridge; a rule keeps the calls on
this bucket whose caller is not a session of the deploy role (the role CI
assumes to run ``pulumi up``) and publishes them to an SNS topic, with an
optional e-mail subscription.  So a console click or a script changing the
bucket behind IaC's back is noticed the same minute.

Known shortcoming: EventBridge only receives these events when the account
has a CloudTrail trail that is logging; object-level calls (GetObject,
PutObject) also need S3 data events enabled on that trail for this bucket.
Neither is created here: a trail is usually an account-wide decision with
its own log bucket.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

COMPONENT_TYPE = "statekeeper:monitoring:BucketAccessAlarm"


def assumed_role_prefix(account_id: str, role_name: str) -> str:
    """The ARN prefix CloudTrail shows for every session of a role."""
    return f"arn:aws:sts::{account_id}:assumed-role/{role_name}/"


def event_pattern(bucket_name: str, caller_prefix: str,
                  writes_only: bool) -> str:
    """EventBridge pattern: calls on the bucket by any other caller."""
    detail: dict[str, object] = {
        "eventSource": ["s3.amazonaws.com"],
        "requestParameters": {"bucketName": [bucket_name]},
        "userIdentity": {
            "arn": [{"anything-but": {"prefix": caller_prefix}}],
        },
    }
    if writes_only:
        detail["readOnly"] = [False]
    return json.dumps({
        "source": ["aws.s3"],
        "detail-type": ["AWS API Call via CloudTrail"],
        "detail": detail,
    })


def topic_policy(topic_arn: str, rule_arn: str) -> str:
    """Let EventBridge publish to the topic for this rule only."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "EventBridgePublish",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sns:Publish",
            "Resource": topic_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
        }],
    })


class BucketAccessAlarm(pulumi.ComponentResource):
    """EventBridge rule + SNS topic for calls on a bucket outside IaC."""

    topic: aws.sns.Topic
    rule: aws.cloudwatch.EventRule

    def __init__(
        self,
        resource_name: str,
        *,
        bucket_name: pulumi.Input[str],
        deploy_role_name: str,
        tags: dict[str, str],
        alert_email: str | None = None,
        writes_only: bool = True,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        account_id = aws.get_caller_identity_output(
            opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        caller_prefix = account_id.apply(
            lambda account: assumed_role_prefix(account, deploy_role_name))

        self.topic = aws.sns.Topic(
            f"{resource_name}-topic", tags=tags, opts=child)
        self.rule = aws.cloudwatch.EventRule(
            f"{resource_name}-rule",
            description=pulumi.Output.concat(
                "API calls on ", bucket_name, " not made by ",
                deploy_role_name),
            event_pattern=pulumi.Output.all(bucket_name, caller_prefix)
            .apply(lambda args: event_pattern(args[0], args[1],
                                              writes_only)),
            tags=tags, opts=child)
        aws.sns.TopicPolicy(
            f"{resource_name}-topic-policy", arn=self.topic.arn,
            policy=pulumi.Output.all(self.topic.arn, self.rule.arn)
            .apply(lambda arns: topic_policy(arns[0], arns[1])),
            opts=child)
        aws.cloudwatch.EventTarget(
            f"{resource_name}-target", rule=self.rule.name,
            arn=self.topic.arn, opts=child)
        if alert_email:
            aws.sns.TopicSubscription(
                f"{resource_name}-email", topic=self.topic.arn,
                protocol="email", endpoint=alert_email, opts=child)

        self.register_outputs({"topic_arn": self.topic.arn,
                               "rule_arn": self.rule.arn})
