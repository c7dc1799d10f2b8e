using System.Net;
using Microsoft.Extensions.Logging;

namespace Transport.Winsock.Diagnostics;

/// <summary>
/// The transport's log messages, under the category <c>Transport.Winsock</c>. Event ids are stable: add
/// new ones, never renumber. As with Kestrel's transports, nothing above Debug in normal operation:
/// warnings only when something asked for cannot be done or a fallback happens.
/// </summary>
internal static partial class WinsockTransportLog
{
    [LoggerMessage(1, LogLevel.Debug, "Listening on {EndPoint} with {PendingAccepts} pending accepts; socket reuse {ReuseMode}.", EventName = "ListenerStarted")]
    public static partial void ListenerStarted(this ILogger logger, EndPoint? endPoint, int pendingAccepts, string reuseMode);

    [LoggerMessage(2, LogLevel.Debug, "An accept on {EndPoint} failed with {SocketError}; the socket was discarded and the accept reposted.", EventName = "AcceptFault")]
    public static partial void AcceptFault(this ILogger logger, EndPoint? endPoint, System.Net.Sockets.SocketError socketError);

    [LoggerMessage(3, LogLevel.Debug, "Connection id \"{ConnectionId}\" received FIN.", EventName = "ConnectionReadFin")]
    public static partial void ConnectionReadFin(this ILogger logger, string connectionId);

    [LoggerMessage(4, LogLevel.Debug, "Connection id \"{ConnectionId}\" sending FIN.", EventName = "ConnectionWriteFin")]
    public static partial void ConnectionWriteFin(this ILogger logger, string connectionId);

    [LoggerMessage(5, LogLevel.Debug, "Connection id \"{ConnectionId}\" sending RST because: \"{Reason}\"", EventName = "ConnectionWriteRst")]
    public static partial void ConnectionWriteRst(this ILogger logger, string connectionId, string reason);

    [LoggerMessage(6, LogLevel.Debug, "Connection id \"{ConnectionId}\" reset by the peer.", EventName = "ConnectionReset")]
    public static partial void ConnectionReset(this ILogger logger, string connectionId);

    [LoggerMessage(7, LogLevel.Debug, "Connection id \"{ConnectionId}\" communication error.", EventName = "ConnectionError")]
    public static partial void ConnectionError(this ILogger logger, string connectionId, Exception exception);

    [LoggerMessage(8, LogLevel.Debug, "Connection id \"{ConnectionId}\" paused reading: the application has not consumed what was received.", EventName = "ConnectionPause")]
    public static partial void ConnectionPause(this ILogger logger, string connectionId);

    [LoggerMessage(9, LogLevel.Debug, "Connection id \"{ConnectionId}\" resumed reading.", EventName = "ConnectionResume")]
    public static partial void ConnectionResume(this ILogger logger, string connectionId);

    [LoggerMessage(10, LogLevel.Debug, "Connection id \"{ConnectionId}\": the peer sent no FIN within the drain timeout; the socket was closed, not reused.", EventName = "DrainTimedOut")]
    public static partial void DrainTimedOut(this ILogger logger, string connectionId);

    [LoggerMessage(11, LogLevel.Debug, "A reuse disconnect failed with {SocketError}; the socket was closed.", EventName = "DisconnectFailed")]
    public static partial void DisconnectFailed(this ILogger logger, System.Net.Sockets.SocketError socketError);

    [LoggerMessage(12, LogLevel.Debug, "A reuse disconnect did not finish within {Timeout}; the socket was closed.", EventName = "DisconnectTimedOut")]
    public static partial void DisconnectTimedOut(this ILogger logger, TimeSpan timeout);

    [LoggerMessage(13, LogLevel.Error, "Connection id \"{ConnectionId}\": a ConnectionClosed callback threw.", EventName = "ConnectionClosedCallbackFailed")]
    public static partial void ConnectionClosedCallbackFailed(this ILogger logger, string connectionId, Exception exception);

    [LoggerMessage(14, LogLevel.Warning, "Socket reuse is off for {EndPoint}: {Reason}. Connections get fresh sockets and still end with a graceful close.", EventName = "ReuseOff")]
    public static partial void ReuseOff(this ILogger logger, EndPoint? endPoint, string reason);

    [LoggerMessage(15, LogLevel.Warning, "Socket reuse turned off for {Sockets}: {Failures} of the last {Window} recycles failed; the last one: {LastFailure}. The reuse self-test runs again later.", EventName = "ReuseFallback")]
    public static partial void ReuseFallback(this ILogger logger, object sockets, int failures, int window, string lastFailure);

    [LoggerMessage(16, LogLevel.Debug, "Connection id \"{ConnectionId}\": the peer did not close within the deferred FIN timeout; sending FIN first.", EventName = "DeferFinTimedOut")]
    public static partial void DeferFinTimedOut(this ILogger logger, string connectionId);

    [LoggerMessage(17, LogLevel.Debug, "Socket reuse is off for {EndPoint}: {Reason}. Each connection gets the socket its accept made, as with Kestrel's Sockets transport, and still ends with a graceful close.", EventName = "ReuseNotNative")]
    public static partial void ReuseNotNative(this ILogger logger, EndPoint? endPoint, string reason);

    [LoggerMessage(18, LogLevel.Debug, "An accept on {EndPoint} into a recycled socket failed ({Failure}); the socket was closed, and the failure counts toward the reuse fallback.", EventName = "RecycledAcceptFailed")]
    public static partial void RecycledAcceptFailed(this ILogger logger, EndPoint? endPoint, string failure);

    [LoggerMessage(28, LogLevel.Debug, "An outbound connect on a recycled socket failed ({Failure}); the socket was closed, the connect goes on with another, and the failure counts toward the reuse fallback.", EventName = "RecycledConnectFailed")]
    public static partial void RecycledConnectFailed(this ILogger logger, string failure);

    [LoggerMessage(20, LogLevel.Warning, "Accepting on {EndPoint} paused: {Reason}. Connections wait in the listen backlog; one accept probes with back-off (up to 1 s), at once when a connection closes. ({QuietPauses} shorter pauses since the last such warning.)", EventName = "AcceptPaused")]
    public static partial void AcceptPaused(this ILogger logger, EndPoint? endPoint, string reason, long quietPauses);

    [LoggerMessage(21, LogLevel.Information, "Accepting on {EndPoint} resumed after {Paused} paused ({Failures} accepts failed or held back meanwhile).", EventName = "AcceptResumed")]
    public static partial void AcceptResumed(this ILogger logger, EndPoint? endPoint, TimeSpan paused, long failures);

    [LoggerMessage(22, LogLevel.Debug, "Accepting on {EndPoint} paused again within a minute of the last warning: {Reason}.", EventName = "AcceptPausedAgain")]
    public static partial void AcceptPausedAgain(this ILogger logger, EndPoint? endPoint, string reason);

    [LoggerMessage(23, LogLevel.Debug, "Accepting on {EndPoint} resumed after {Paused} paused ({Failures} accepts failed or held back meanwhile).", EventName = "AcceptResumedAgain")]
    public static partial void AcceptResumedAgain(this ILogger logger, EndPoint? endPoint, TimeSpan paused, long failures);

    [LoggerMessage(19, LogLevel.Warning, "An accept on {EndPoint} failed unexpectedly; the socket was discarded and the accept is reposted after a pause.", EventName = "AcceptFailed")]
    public static partial void AcceptFailed(this ILogger logger, EndPoint? endPoint, Exception exception);

    [LoggerMessage(36, LogLevel.Debug, "I/O engine for outbound connections: {Engine} ({Reason}).", EventName = "OutboundEngineChosen")]
    public static partial void OutboundEngineChosen(this ILogger logger, string engine, string reason);

    [LoggerMessage(24, LogLevel.Debug, "I/O engine for {EndPoint}: {Engine} ({Reason}).", EventName = "EngineChosen")]
    public static partial void EngineChosen(this ILogger logger, EndPoint? endPoint, string engine, string reason);

    [LoggerMessage(25, LogLevel.Warning, "I/O engine for {EndPoint}: {Engine}; io_uring was asked for and refused: {Reason}.", EventName = "EngineRefused")]
    public static partial void EngineRefused(this ILogger logger, EndPoint? endPoint, string engine, string reason);

    [LoggerMessage(26, LogLevel.Critical, "The io_uring thread {Thread} failed; its connections were aborted and its listener stops accepting.", EventName = "RingThreadFailed")]
    public static partial void RingThreadFailed(this ILogger logger, string thread, Exception exception);

    [LoggerMessage(27, LogLevel.Error, "Work run on an io_uring thread threw.", EventName = "RingWorkFailed")]
    public static partial void RingWorkFailed(this ILogger logger, Exception exception);

    [LoggerMessage(29, LogLevel.Warning, "The io_uring thread {Thread} ended with {Count} operations the kernel had not completed within {Bound} of cancels (its eventfd read among what was left: {WakeReadLeft}). They are kept for good, with the memory they hold, never reused; descriptors they use stay open. A kernel fault; nothing of theirs was released.", EventName = "RingOperationsQuarantined")]
    public static partial void RingOperationsQuarantined(this ILogger logger, string thread, int count, bool wakeReadLeft, TimeSpan bound);

    [LoggerMessage(30, LogLevel.Warning, "The kernel dropped {Count} completions of the io_uring thread {Thread} ({Total} in all): it could not allocate an overflow entry (memory pressure). The ring goes on; a resync finds the operations whose completion was lost, and their connections end. At most one such warning a minute per thread.", EventName = "RingCompletionsDropped")]
    public static partial void RingCompletionsDropped(this ILogger logger, string thread, int count, int total);

    [LoggerMessage(31, LogLevel.Debug, "The io_uring thread {Thread} resynced after a dropped completion: {Lost} operations were lost ({Total} in all); the others go on.", EventName = "RingResynced")]
    public static partial void RingResynced(this ILogger logger, string thread, int lost, int total);

    [LoggerMessage(32, LogLevel.Debug, "A reuse disconnect threw unexpectedly; the socket was closed, and the failure counts as a failed disconnect.", EventName = "DisconnectThrew")]
    public static partial void DisconnectThrew(this ILogger logger, Exception exception);

    [LoggerMessage(33, LogLevel.Debug, "An outbound connect on a recycled socket failed ({Failure}); the socket was closed and the connect is tried once more on a new socket.", EventName = "RecycledConnectRetried")]
    public static partial void RecycledConnectRetried(this ILogger logger, string failure);

    [LoggerMessage(34, LogLevel.Information, "Socket reuse is on again for {Sockets}: {Status}.", EventName = "ReuseRestored")]
    public static partial void ReuseRestored(this ILogger logger, object sockets, string status);

    [LoggerMessage(35, LogLevel.Error, "Connection id \"{ConnectionId}\": an unexpected exception escaped the transport's handling of the connection; it was aborted.", EventName = "ConnectionFault")]
    public static partial void ConnectionFault(this ILogger logger, string connectionId, Exception exception);
}
