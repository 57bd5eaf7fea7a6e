//! The operator's actions on a queue's dead letters (in the dashboard's
//! process): parsed once from a confirmation link or an action form into
//! [`Action`], which the confirmation page, the action handler and
//! `Dashboard::act` then match on.

/// What an operator asks for a queue's dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Move every dead letter back to its queue.
    RedriveAll,
    /// Delete every dead letter for good.
    Purge,
    /// Move the dead letter with this message id back to its queue.
    RedriveOne(String),
    /// Delete the dead letter with this message id for good.
    DeleteOne(String),
}

impl Action {
    /// The action called `name` in links and forms; the one-message
    /// actions need the message `id`.
    pub(crate) fn parse(name: &str, id: Option<&str>) -> Result<Self, String> {
        let id = || {
            id.filter(|id| !id.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("{name} needs a message id"))
        };
        match name {
            "redrive-all" => Ok(Action::RedriveAll),
            "purge" => Ok(Action::Purge),
            "redrive-one" => Ok(Action::RedriveOne(id()?)),
            "delete-one" => Ok(Action::DeleteOne(id()?)),
            other => Err(format!("no action `{other}`")),
        }
    }

    /// Its name in links, forms and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Action::RedriveAll => "redrive-all",
            Action::Purge => "purge",
            Action::RedriveOne(_) => "redrive-one",
            Action::DeleteOne(_) => "delete-one",
        }
    }

    /// The message a one-message action is about.
    pub(crate) fn id(&self) -> Option<&str> {
        match self {
            Action::RedriveOne(id) | Action::DeleteOne(id) => Some(id),
            Action::RedriveAll | Action::Purge => None,
        }
    }

    /// Whether it destroys messages (its button is red).
    pub(crate) fn destroys(&self) -> bool {
        matches!(self, Action::Purge | Action::DeleteOne(_))
    }

    /// Whether it finds its message by receiving from the dead-letter queue
    /// (which raises receive counts there; see `Dashboard::dead_letter_queue`).
    pub(crate) fn receives_one(&self) -> bool {
        self.id().is_some()
    }

    /// What it will do to `queue`'s dead letters, for the confirmation.
    pub(crate) fn describe(&self, queue: &str) -> String {
        match self {
            Action::RedriveAll => format!("move every dead letter of {queue} back to it"),
            Action::Purge => format!("delete every dead letter of {queue} for good"),
            Action::RedriveOne(id) => format!("move back dead letter {id} of {queue}"),
            Action::DeleteOne(id) => format!("delete for good dead letter {id} of {queue}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_parses_from_its_name_and_the_one_message_ones_need_an_id() {
        for action in [
            Action::RedriveAll,
            Action::Purge,
            Action::RedriveOne("m-1".into()),
            Action::DeleteOne("m-1".into()),
        ] {
            assert_eq!(
                Action::parse(action.name(), action.id()),
                Ok(action.clone())
            );
        }
        assert_eq!(Action::parse("purge", Some("m-1")), Ok(Action::Purge));
        for name in ["redrive-one", "delete-one"] {
            assert!(Action::parse(name, None).is_err(), "{name} without an id");
            assert!(
                Action::parse(name, Some("")).is_err(),
                "{name} with an empty id"
            );
        }
        let unknown = Action::parse("drop-table", None).unwrap_err();
        assert_eq!(unknown, "no action `drop-table`");
        assert!(Action::DeleteOne("m".into()).destroys() && Action::Purge.destroys());
        assert!(!Action::RedriveAll.destroys() && !Action::RedriveOne("m".into()).destroys());
    }
}
