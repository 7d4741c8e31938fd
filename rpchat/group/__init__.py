"""Group chats: several cards in one chat, stored as SillyTavern stores them (see README, "Group chats")."""
